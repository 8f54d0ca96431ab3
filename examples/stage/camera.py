#!/usr/bin/python3
"""A camera and a results viewer for the stage example of docs/stages.md (python3-websockets).

Usage: camera.py HOST:HTTP_PORT [--seconds S] [--fps F] [--width W] [--height H]

Publishes RGB frames (16-byte header + W x H x 3 bytes) to /v1/ws/publish/camera at F fps,
reads the relay's events on the same socket (drop notices, slow_down, resume), and reads
/v1/ws/subscribe/camera.results. At the end it checks that every frame came back as a result
or as a drop notice, exactly once, and prints a summary.
"""
import argparse
import asyncio
import json
import struct
import time
import urllib.request

import websockets


async def main(args):
    base = f"ws://{args.relay}"
    sent, results, drops, signals = 0, {}, {}, []
    async with websockets.connect(f"{base}/v1/ws/subscribe/camera.results?name=py-results",
                                  max_size=None) as viewer, \
            websockets.connect(f"{base}/v1/ws/publish/camera") as camera:

        async def read_events():
            async for msg in camera:
                event = json.loads(msg)
                if event.get("dropped"):
                    drops[event["frame_index"]] = event["reason"]
                elif "warning" in event or "resume" in event:
                    signals.append((sent, event))

        async def read_results():
            async for msg in viewer:
                index = struct.unpack("<Q", msg[:8])[0]
                body = msg[16:]
                line = json.loads(body[:body.index(b"\n")])
                results[index] = line  # {"width", "height", "mean"}

        tasks = [asyncio.create_task(read_events()), asyncio.create_task(read_results())]
        interval, start = 1 / args.fps, time.monotonic()
        frames = int(args.seconds * args.fps)
        for i in range(frames):
            shade = (i * 3) % 256  # a frame that gets brighter, then wraps
            pixels = bytes([shade, shade // 2, 255 - shade]) * (args.width * args.height)
            await camera.send(struct.pack("<Qq", i, time.time_ns()) + pixels)
            sent = i + 1
            await asyncio.sleep(max(0, start + (i + 1) * interval - time.monotonic()))
        deadline = time.monotonic() + 10
        while len(results) + len(drops) < frames and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()

    both = set(results) & set(drops)
    missing = set(range(frames)) - set(results) - set(drops)
    assert not both, f"frames both processed and dropped: {sorted(both)[:10]}"
    assert not missing, f"frames neither processed nor announced: {sorted(missing)[:10]}"
    reasons = {}
    for r in drops.values():
        reasons[r] = reasons.get(r, 0) + 1
    with urllib.request.urlopen(f"http://{args.relay}/v1/stats") as r:
        stage = next(t for t in json.load(r)["topics"] if t["name"] == "camera")["stage"]
    workers = {w["name"]: w["completed"] for w in stage["workers"]}
    print(json.dumps({"frames": frames, "results": len(results), "dropped": reasons,
                      "signals": [e for _, e in signals], "completed_by_worker": workers}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("relay")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    asyncio.run(main(p.parse_args()))
