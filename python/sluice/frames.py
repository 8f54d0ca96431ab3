"""The relay's frames: a header and the payload; and the values a subscriber receives.

The header is 16 bytes (frame index, u64 little-endian; timestamp in ns, i64 little-endian),
or, in a session opened with ``?header=24`` (as this SDK's publishers and subscribers are), 24:
the same, then the item's flags (u32 little-endian: ``DELTA``, ``DISCARDABLE``) and 4 reserved
bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is optional
    import numpy

HEADER = struct.Struct("<Qq")
HEADER_BYTES = HEADER.size  # 16
FLAGGED_HEADER = struct.Struct("<QqII")
FLAGGED_HEADER_BYTES = FLAGGED_HEADER.size  # 24
DELTA = 1  # the item depends on an earlier one (a video's delta frame); clear on a keyframe
DISCARDABLE = 2  # nothing depends on the item
_unpack = HEADER.unpack_from
_pack = HEADER.pack
_unpack_flagged = FLAGGED_HEADER.unpack_from
_pack_flagged = FLAGGED_HEADER.pack


def encode(index: int, timestamp_ns: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A frame's bytes with the 16-byte header, then the payload (one copy, as a WebSocket
    message needs)."""
    return _pack(index, timestamp_ns) + (payload if isinstance(payload, bytes) else bytes(payload))


def encode_flagged(index: int, timestamp_ns: int, flags: int,
                   payload: bytes | bytearray | memoryview) -> bytes:
    """A frame's bytes with the 24-byte header (its flags), then the payload."""
    return _pack_flagged(index, timestamp_ns, flags, 0) + (
        payload if isinstance(payload, bytes) else bytes(payload))


class Frame:
    """A frame as received: the producer's index and timestamp (Unix ns; the relay's arrival
    time when the producer sent 0), its flags (``DELTA``, ``DISCARDABLE``; 0 from a 16-byte
    header), and the payload — a view of the received message, not a copy. (A plain class with
    slots: one is made per frame received.)"""

    __slots__ = ("index", "timestamp_ns", "payload", "flags")

    def __init__(self, index: int, timestamp_ns: int, payload: memoryview, flags: int = 0) -> None:
        self.index = index
        self.timestamp_ns = timestamp_ns
        self.payload = payload
        self.flags = flags

    @property
    def keyframe(self) -> bool:
        """It depends on no earlier frame (``DELTA`` clear)."""
        return not self.flags & DELTA

    def __repr__(self) -> str:
        return (f"Frame(index={self.index}, timestamp_ns={self.timestamp_ns}, flags={self.flags}, "
                f"{len(self.payload)} bytes)")

    @staticmethod
    def decode(message: bytes | bytearray | memoryview, header_bytes: int = HEADER_BYTES) -> "Frame":
        """A frame from a message of a session with a `header_bytes` (16 or 24) header."""
        view = memoryview(message)
        if len(view) < header_bytes:
            raise ValueError(
                f"a frame of {len(view)} bytes is shorter than its {header_bytes}-byte header")
        if header_bytes == FLAGGED_HEADER_BYTES:
            index, stamp, flags, _ = _unpack_flagged(view)
            return Frame(index, stamp, view[FLAGGED_HEADER_BYTES:], flags)
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
