"""The relay's protobuf messages for Python tests: generated from proto/sluice/v1/relay.proto
by protoc into a temporary directory, then imported (python3-protobuf)."""
import importlib
import os
import subprocess
import sys
import tempfile


def generated(proto_dir, protoc):
    """The relay_pb2 module, and the directory it was generated in (for other temporary files)."""
    gen = tempfile.mkdtemp()
    subprocess.run([protoc, f"--proto_path={proto_dir}", f"--python_out={gen}",
                    os.path.join(proto_dir, "sluice/v1/relay.proto")], check=True)
    sys.path.insert(0, gen)
    return importlib.import_module("sluice.v1.relay_pb2"), gen


class Calls:
    """The relay's gRPC methods on `channel`, typed with the generated messages `pb`."""

    def __init__(self, channel, pb):
        self.subscribe = channel.unary_stream(
            "/sluice.v1.Relay/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeEvent.FromString)
        self.publish = channel.stream_stream(
            "/sluice.v1.Relay/Publish",
            request_serializer=pb.PublishRequest.SerializeToString,
            response_deserializer=pb.PublishEvent.FromString)
        self.stats = channel.unary_unary(
            "/sluice.v1.Relay/Stats",
            request_serializer=pb.StatsRequest.SerializeToString,
            response_deserializer=pb.StatsReply.FromString)
