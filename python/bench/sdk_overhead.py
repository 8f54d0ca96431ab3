#!/usr/bin/env python3
"""What the Python SDK costs over raw python3-websockets: one publisher -> the relay -> one
subscriber, in one asyncio process, 1 KiB and 1 MiB frames on a lossless topic, as fast as they
go. The same workload written with bare websockets (struct.pack of the header, recv()) runs
beside it, alternated, 5 runs each; prints items/s, MB/s (medians) and the SDK's ratio — the
median of the 5 paired runs' ratios, each run's shown (target: >= 0.9).

    make bench-python   (or: SLUICE_BINARY=build/src/cli/sluice python3 python/bench/sdk_overhead.py)
"""
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import websockets  # noqa: E402

import sluice  # noqa: E402

SLUICE = os.environ.get("SLUICE_BINARY", "build/src/cli/sluice")
HEADER = struct.Struct("<Qq")


async def timed(produce, consume, pub, sub):
    """Runs `produce` beside `consume`: the seconds until the consumer has the last frame, and
    the payload bytes it counted. Then both ends close."""
    start = time.perf_counter()
    producer = asyncio.create_task(produce())
    got = await consume()
    elapsed = time.perf_counter() - start
    await producer
    await pub.close()
    await sub.close()
    return elapsed, got


async def with_sdk(url, topic, size, count):
    sub = await sluice.Subscriber.connect(topic, url)
    pub = await sluice.Publisher.connect(topic, url)
    payload = b"p" * size

    async def produce():
        for _ in range(count):
            await pub.send(payload)

    async def consume():
        got = 0
        async for m in sub:
            if isinstance(m, sluice.Frame):
                got += len(m.payload)
                if m.index == count - 1:
                    return got
        return got

    return await timed(produce, consume, pub, sub)


async def with_websockets(url, topic, size, count):
    sub = await websockets.connect(f"{url}/v1/ws/subscribe/{topic}", max_size=None, ping_interval=None)
    pub = await websockets.connect(f"{url}/v1/ws/publish/{topic}", max_size=None, ping_interval=None)
    payload = b"p" * size

    async def produce():
        for i in range(count):
            await pub.send(HEADER.pack(i, 0) + payload)

    async def consume():
        got = 0
        while True:
            m = await sub.recv()
            if isinstance(m, bytes):
                index, _ = HEADER.unpack_from(m)
                got += len(m) - 16
                if index == count - 1:
                    return got

    return await timed(produce, consume, pub, sub)


async def main():
    # (Publisher and subscriber share one event loop: a 1 MiB send holds the loop long enough
    # that the relay's stalled-consumer judge would end the subscriber; it is given 10 s.)
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0", SLUICE_MAX_SEND_TIMEOUTS="100",
               SLUICE_LOG_LEVEL="warn")
    relay = subprocess.Popen([SLUICE, "serve"], stdout=subprocess.PIPE, env=env, text=True)
    url = "ws://" + json.loads(relay.stdout.readline())["http"]
    print("Python SDK vs raw python3-websockets: 1 publisher -> relay -> 1 subscriber, one process")
    try:
        run = 0
        for name, size, count in (("1 KiB", 1024, 50_000), ("1 MiB", 1 << 20, 300)):
            rates = {"websockets": [], "sdk": []}
            for rep in range(5):
                for who in (("websockets", "sdk") if rep % 2 == 0 else ("sdk", "websockets")):
                    run += 1
                    fn = with_sdk if who == "sdk" else with_websockets
                    elapsed, got = await fn(url, f"bench.{run}", size, count)
                    assert got == size * count, (who, got)
                    rates[who].append(count / elapsed)
            raw, sdk = statistics.median(rates["websockets"]), statistics.median(rates["sdk"])
            ratios = [s / w for s, w in zip(rates["sdk"], rates["websockets"])]
            runs = " ".join(f"{r:.2f}" for r in ratios)
            print(f"  {name} x {count}: websockets {raw:9.0f} items/s {raw * size / 1e6:7.1f} MB/s"
                  f" | SDK {sdk:9.0f} items/s {sdk * size / 1e6:7.1f} MB/s"
                  f" | SDK/websockets {statistics.median(ratios):.2f}x (runs {runs})")
    finally:
        relay.terminate()
        relay.wait()


asyncio.run(main())
