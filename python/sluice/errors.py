"""What the relay refused, as exceptions that name the setting involved."""
from __future__ import annotations


class SluiceError(Exception):
    """Base of the client's errors."""


class Refused(SluiceError):
    """The relay refused to open the session: its HTTP status (401, 403, 404, 503, ...) or gRPC
    status, and its one-line reason (which names the setting when a limit refused it)."""

    def __init__(self, status: int | str, reason: str) -> None:
        super().__init__(f"the relay refused: {status}: {reason}")
        self.status = status
        self.reason = reason


class Closed(SluiceError):
    """The relay ended the session: the WebSocket close code and reason (docs/protocol.md), or
    the gRPC status."""

    def __init__(self, code: int | str, reason: str) -> None:
        super().__init__(f"the relay closed the session: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class MaxWaitExceeded(Closed):
    """A frame waited `max_wait_ms` for room on a full lossless topic (close 1013): the consumer
    is too slow for the producer. `setting` is the topic setting that bounds the wait."""

    setting = "max_wait_ms"

    def __init__(self, code: int | str, reason: str, frame_index: int | None) -> None:
        super().__init__(code, reason)
        self.frame_index = frame_index


class Unreachable(SluiceError):
    """The relay could not be reached at all on the first connection, within the connect
    timeout: nothing listens there, the address is wrong, TLS does not match, or it is the
    relay's other port. `target` is the address tried; `reason` what the system or gRPC said."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot reach the relay at {target}: {reason}")
        self.target = target
        self.reason = reason
