#!/usr/bin/python3
"""The relay's WebSocket endpoints driven from Python (python3-websockets): interoperability.

Usage: python_ws_test.py SLUICE_BINARY

Starts `sluice serve` on ephemeral ports; a viewer subscribes, a publisher sends frames with
the 16-byte header (frame_index u64, timestamp_ns i64, little-endian); the viewer receives
them in order with the same header; a frame over the size limit closes the publisher with 1009.
"""
import asyncio
import json
import os
import struct
import subprocess
import sys

import websockets


async def run(http):
    base = f"ws://{http}"
    async with websockets.connect(f"{base}/v1/ws/subscribe/py.cam?name=python",
                                  max_size=None) as viewer, \
            websockets.connect(f"{base}/v1/ws/publish/py.cam") as pub:
        n = 50
        for i in range(n):
            await pub.send(struct.pack("<Qq", i, 1000 + i) + b"frame-%d" % i)
        for i in range(n):
            msg = await asyncio.wait_for(viewer.recv(), 10)
            assert isinstance(msg, bytes), msg
            index, stamp = struct.unpack("<Qq", msg[:16])
            assert (index, stamp, msg[16:]) == (i, 1000 + i, b"frame-%d" % i), (index, msg[:40])

        await pub.send("not json {")
        event = json.loads(await asyncio.wait_for(pub.recv(), 10))
        assert "invalid JSON" in event["error"], event

    async with websockets.connect(f"{base}/v1/ws/publish/py.cam") as big:
        try:  # the close may arrive while the frame is still being sent
            await big.send(struct.pack("<Qq", 0, 0) + b"x" * (2 * 1024 * 1024))
            await asyncio.wait_for(big.recv(), 10)
            raise AssertionError("an oversized frame was accepted")
        except websockets.ConnectionClosed as closed:
            assert closed.code == 1009, closed.code


def main():
    sluice = sys.argv[1]
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0",
               STREAM_MAX_FRAME_SIZE_MB="1")
    relay = subprocess.Popen([sluice, "serve"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = json.loads(relay.stdout.readline())
        assert line["event"] == "listening", line
        asyncio.run(run(line["http"]))
        print("python websockets client ok: frames in order with their header, 1009 when too big")
    finally:
        relay.terminate()
        assert relay.wait(timeout=10) == 0


if __name__ == "__main__":
    main()
