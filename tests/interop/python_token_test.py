#!/usr/bin/python3
"""Tokens from Python: a relay with principals, driven by python3-grpcio (metadata
`authorization: Bearer`) and python3-websockets (the browser way: subprotocols `sluice` and
`sluice.bearer.<token>`); refusals without a token.

Usage: python_token_test.py SLUICE_BINARY PROTO_DIR PROTOC
"""
import asyncio
import os
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import relay_pb  # noqa: E402  (tests/pylib)
import relay_process  # noqa: E402
import websockets

READER, WRITER = "reader-token-0123", "writer-token-4567"


def main():
    sluice, proto_dir, protoc = sys.argv[1:4]
    pb, gen = relay_pb.generated(proto_dir, protoc)

    relay, line = relay_process.serve(sluice, relay_process.principals(READER, WRITER), gen)
    try:
        channel = grpc.insecure_channel(line["grpc"])
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = relay_pb.Calls(channel, pb)
        subscribe, publish = calls.subscribe, calls.publish

        try:
            next(subscribe(pb.SubscribeRequest(topic="py.cam"), timeout=10))
            raise AssertionError("a subscription without a token was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        print("ok: gRPC without a token: UNAUTHENTICATED")

        async def run():
            base = f"ws://{line['http']}"
            try:
                async with websockets.connect(f"{base}/v1/ws/subscribe/py.cam"):
                    raise AssertionError("a WebSocket without a token was accepted")
            except websockets.InvalidStatusCode as e:
                assert e.status_code == 401, e.status_code
            print("ok: WebSocket without a token: 401")
            async with websockets.connect(
                    f"{base}/v1/ws/subscribe/py.cam",
                    subprotocols=["sluice", f"sluice.bearer.{READER}"]) as viewer:
                assert viewer.subprotocol == "sluice", viewer.subprotocol
                sub = subscribe(pb.SubscribeRequest(topic="py.cam", name="py"), timeout=30,
                                metadata=[("authorization", f"Bearer {READER}")])
                sub.initial_metadata()
                acks = list(publish(iter([pb.PublishRequest(item=pb.Item(
                    topic="py.cam", payload=b"hello", sequence=1))]), timeout=10,
                    metadata=[("authorization", f"Bearer {WRITER}")]))
                assert acks, "no ack"
                msg = await asyncio.wait_for(viewer.recv(), 10)
                assert msg[16:] == b"hello", msg
                event = next(sub)
                assert event.item.payload == b"hello", event
                sub.cancel()
            print("ok: the subprotocol token (answered 'sluice') and the metadata token read "
                  "what the writer's token published")

        asyncio.run(run())
    finally:
        relay.terminate()
        assert relay.wait(timeout=10) == 0


if __name__ == "__main__":
    main()
