#!/usr/bin/python3
"""The relay's standard gRPC services, as a health checker and grpcurl use them: the messages
are written as raw protobuf bytes here (no generated code for them is installed), so the test
checks the wire, not a stub.

- grpc.health.v1.Health/Check: SERVING for the server ("") and for "sluice.v1.Relay",
  NOT_FOUND for a service the relay does not have.
- grpc.reflection.v1alpha.ServerReflection: list_services names sluice.v1.Relay, and the file
  that defines it can be fetched (what grpcurl does before calling a method).

Usage: grpc_standard_services_test.py SLUICE_BINARY
"""
import json
import os
import subprocess
import sys

import grpc


def field_string(number, text):
    """A length-delimited protobuf field (wire type 2) holding `text`."""
    data = text.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def main():
    sluice = sys.argv[1]
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0")
    relay = subprocess.Popen([sluice, "serve"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = json.loads(relay.stdout.readline())
        channel = grpc.insecure_channel(line["grpc"])
        grpc.channel_ready_future(channel).result(timeout=10)
        identity = lambda b: b  # noqa: E731

        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=identity, response_deserializer=identity)
        serving = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
        assert check(b"", timeout=5) == serving
        assert check(field_string(1, "sluice.v1.Relay"), timeout=5) == serving
        try:
            check(field_string(1, "no.such.Service"), timeout=5)
            raise AssertionError("an unknown service was reported healthy")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e

        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=identity, response_deserializer=identity)
        answers = list(reflect(iter([field_string(7, "*"),  # list_services
                                     field_string(4, "sluice.v1.Relay")]),  # file_containing_symbol
                               timeout=10))
        assert len(answers) == 2, answers
        assert b"sluice.v1.Relay" in answers[0] and b"grpc.health.v1.Health" in answers[0], answers[0]
        assert b"sluice/v1/relay.proto" in answers[1] and b"SubscribeRequest" in answers[1]
        print("health and reflection ok")
    finally:
        relay.terminate()
        relay.wait(timeout=10)


if __name__ == "__main__":
    main()
