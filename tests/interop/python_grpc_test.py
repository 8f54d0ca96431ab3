#!/usr/bin/python3
"""The relay driven from Python (python3-grpcio): the proto is usable outside C++.

Usage: python_grpc_test.py SLUICE_BINARY PROTO_DIR PROTOC

Generates Python messages from proto/sluice/v1/relay.proto with protoc, starts `sluice serve`
on ephemeral ports, subscribes, publishes, checks order, acks, Stats, and a refusal's status.
"""
import json
import os
import subprocess
import sys
import threading

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import relay_pb  # noqa: E402  (tests/pylib)


def main():
    sluice, proto_dir, protoc = sys.argv[1:4]
    pb, _ = relay_pb.generated(proto_dir, protoc)

    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0")
    relay = subprocess.Popen([sluice, "serve"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = json.loads(relay.stdout.readline())
        assert line["event"] == "listening", line
        channel = grpc.insecure_channel(line["grpc"])
        grpc.channel_ready_future(channel).result(timeout=10)

        calls = relay_pb.Calls(channel, pb)
        subscribe, publish = calls.subscribe, calls.publish
        stats = calls.stats

        sub = subscribe(pb.SubscribeRequest(topic="py.sensors", name="python"), timeout=30)
        sub.initial_metadata()  # the relay sends it once the subscription exists

        n = 100
        received = []

        def read():
            for event in sub:
                kind = event.WhichOneof("event")
                assert kind in ("item", "batch"), event
                received.extend([event.item] if kind == "item" else event.batch.items)
                if len(received) >= n:
                    return

        reader = threading.Thread(target=read)
        reader.start()

        def items():
            for i in range(n):
                yield pb.PublishRequest(item=pb.Item(
                    topic="py.sensors" if i == 0 else "", payload=b"reading-%d" % i,
                    sequence=i, timestamp_ns=i))

        last_ack = -1
        for event in publish(items(), timeout=30):
            if event.WhichOneof("event") == "ack":
                last_ack = event.ack.sequence
        assert last_ack == n - 1, f"last ack {last_ack}"
        reader.join(timeout=30)
        assert [r.sequence for r in received] == list(range(n)), "order or loss"
        assert received[7].payload == b"reading-7" and received[7].topic == "py.sensors"
        sub.cancel()

        topics = json.loads(stats(pb.StatsRequest(), timeout=10).json)["topics"]
        sensors = [t for t in topics if t["name"] == "py.sensors"][0]
        assert sensors["published"] == n, sensors

        try:
            list(publish(iter([pb.PublishRequest(item=pb.Item(topic="no spaces", payload=b"x"))]),
                         timeout=10))
            raise AssertionError("a malformed topic name was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            assert "topic" in e.details(), e.details()
        channel.close()
        print("python grpc client ok: %d items in order, Stats and INVALID_ARGUMENT" % n)
    finally:
        relay.terminate()
        assert relay.wait(timeout=10) == 0


if __name__ == "__main__":
    main()
