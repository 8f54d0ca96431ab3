"""The relay's frames: a 16-byte header (frame index, u64 little-endian; timestamp in ns, i64
little-endian) and the payload; and the values a subscriber receives."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is optional
    import numpy

HEADER = struct.Struct("<Qq")
HEADER_BYTES = HEADER.size  # 16
_unpack = HEADER.unpack_from
_pack = HEADER.pack


def encode(index: int, timestamp_ns: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A frame's bytes: the header, then the payload (one copy, as a WebSocket message needs)."""
    return _pack(index, timestamp_ns) + (payload if isinstance(payload, bytes) else bytes(payload))


class Frame:
    """A frame as received: the producer's index and timestamp (Unix ns; the relay's arrival
    time when the producer sent 0), and the payload — a view of the received message, not a
    copy. (A plain class with slots: one is made per frame received.)"""

    __slots__ = ("index", "timestamp_ns", "payload")

    def __init__(self, index: int, timestamp_ns: int, payload: memoryview) -> None:
        self.index = index
        self.timestamp_ns = timestamp_ns
        self.payload = payload

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, timestamp_ns={self.timestamp_ns}, {len(self.payload)} bytes)"

    @staticmethod
    def decode(message: bytes | bytearray | memoryview) -> "Frame":
        view = memoryview(message)
        if len(view) < HEADER_BYTES:
            raise ValueError(f"a frame of {len(view)} bytes is shorter than its 16-byte header")
        index, stamp = _unpack(view)
        return Frame(index, stamp, view[HEADER_BYTES:])

    def array(self, dtype: Any = "uint8", shape: tuple[int, ...] | None = None) -> "numpy.ndarray":
        """The payload as a numpy array without copying (read-only: it shares the message's
        memory). `shape`, if given, must hold exactly the payload's elements."""
        import numpy as np  # (optional dependency)

        a = np.frombuffer(self.payload, dtype=dtype)
        return a.reshape(shape) if shape is not None else a


@dataclass(frozen=True, slots=True)
class Gap:
    """`count` frames the relay skipped for this subscriber before the next one, and why
    (`slow_consumer`: it was `depth` behind on a real-time topic; `retention`: it came back
    after the topic had let go of them; `until_keyframe`: after a loss, a video's delta frames
    skipped up to the next keyframe). `count` is None when it is not known (`relay_restart`:
    it came back to a relay that had restarted)."""

    count: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """An event the relay sent a publisher, decoded from its JSON: `kind` is `slow_down`,
    `resume`, `dropped` (a stage will not process `frame_index`; `reason` says why) or `error`;
    `data` is the whole event."""

    kind: str
    data: dict[str, Any]

    @property
    def frame_index(self) -> int | None:
        v = self.data.get("frame_index")
        return int(v) if v is not None else None

    @property
    def reason(self) -> str:
        return str(self.data.get("reason") or self.data.get("error") or self.data.get("limit") or "")

    @staticmethod
    def of(event: dict[str, Any]) -> "Notice":
        if event.get("warning") == "slow_down":
            return Notice("slow_down", event)
        if event.get("resume"):
            return Notice("resume", event)
        if event.get("dropped"):
            return Notice("dropped", event)
        if "error" in event:
            return Notice("error", event)
        return Notice("event", event)
