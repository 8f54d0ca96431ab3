#!/usr/bin/env python3
"""A stage worker with a small image model in numpy (no weights downloaded): each frame is an
RGB image (height x width x 3, uint8); the result is its grayscale (height x width, uint8). The
Python counterpart of `sluice worker`. Ctrl-C or SIGTERM drains it: the frames in flight are
answered, new ones go to the stage's other workers.

    python3 python/examples/grayscale_worker.py --topic camera --width 640 --height 480
"""
import argparse
import asyncio
import json

import numpy as np

import sluice

WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=sluice.DEFAULT_URL)
    p.add_argument("--topic", required=True)
    p.add_argument("--name", default="py-grayscale")
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--token")
    a = p.parse_args()

    worker = sluice.Worker(a.topic, a.url, name=a.name, concurrency=a.concurrency, token=a.token)

    @worker.handler
    def grayscale(frame: sluice.Frame) -> bytes:
        image = frame.array("uint8", (a.height, a.width, 3))  # the received bytes, not a copy
        return (image.astype(np.float32) @ WEIGHTS).astype(np.uint8).tobytes()

    async def run() -> None:
        task = asyncio.create_task(worker.run())
        while not worker.joined and not task.done():
            await asyncio.sleep(0.01)
        print(json.dumps({"event": "joined", **worker.joined}), flush=True)
        await task

    asyncio.run(run())
    print(json.dumps({"event": "stopped", "processed": worker.processed, "failed": worker.failed}),
          flush=True)


if __name__ == "__main__":
    main()
