#!/usr/bin/env python3
"""An asyncio producer that reads a video file and publishes its frames through the relay at
the file's frame rate, pacing itself by the relay's backpressure — no web framework, no codec
library: the file is YUV4MPEG2 (.y4m, 4:2:0), which ffmpeg and GStreamer write
(`ffmpeg -i in.mp4 -pix_fmt yuv420p out.y4m`). Each frame's payload is its planes as in the file
(Y, then U and V), its timestamp the frame's time in the video.

    python3 python/examples/video_producer.py --topic camera clip.y4m [--loop] [--realtime]
"""
import argparse
import asyncio
import json
import time
from typing import Iterator

import sluice


def y4m_frames(path: str) -> tuple[dict[str, str], Iterator[bytes]]:
    """The stream header's fields (W, H, F, ...) and an iterator over the frames' bytes."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the iterator)
    header = f.readline().split()
    if not header or header[0] != b"YUV4MPEG2":
        raise ValueError(f"{path}: not a YUV4MPEG2 file")
    fields = {h[:1].decode(): h[1:].decode() for h in header[1:]}
    width, height = int(fields["W"]), int(fields["H"])
    size = width * height * 3 // 2  # 4:2:0

    def frames() -> Iterator[bytes]:
        with f:
            while True:
                line = f.readline()
                if not line:
                    return
                if not line.startswith(b"FRAME"):
                    raise ValueError(f"{path}: a frame without its FRAME line")
                data = f.read(size)
                if len(data) < size:
                    return
                yield data

    return fields, frames()


async def produce(path: str, topic: str, url: str, token: str | None, realtime: bool) -> int:
    fields, frames = y4m_frames(path)
    num, den = (int(x) for x in fields.get("F", "30:1").split(":"))
    interval = den / num
    pub = await sluice.Publisher.connect(topic, url, token=token)
    start = time.monotonic()
    n = 0
    for n, frame in enumerate(frames):
        if realtime:  # at the file's frame rate; send() waits meanwhile if the relay holds back
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        await pub.send(frame, timestamp_ns=int(n * interval * 1e9) + 1)
    await pub.close()
    print(json.dumps({"event": "published", "frames": pub.sent, "width": int(fields["W"]),
                      "height": int(fields["H"]), "fps": num / den,
                      "slow_downs": pub.slow_downs}), flush=True)
    return pub.sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--topic", required=True)
    p.add_argument("--url", default=sluice.DEFAULT_URL)
    p.add_argument("--token")
    p.add_argument("--realtime", action="store_true", help="pace at the file's frame rate")
    a = p.parse_args()
    asyncio.run(produce(a.file, a.topic, a.url, a.token, a.realtime))


if __name__ == "__main__":
    main()
