"""The Python client of the Sluice relay (docs/python.md): Publisher, Subscriber and Worker over
WebSocket, GrpcPublisher over gRPC; frames, gap notices and the relay's notices as values."""
from .errors import Closed, MaxWaitExceeded, Refused, SluiceError, Unreachable
from .frames import (DELTA, DISCARDABLE, FLAGGED_HEADER_BYTES, HEADER_BYTES, Frame, Gap, Notice,
                     encode, encode_flagged)
from .grpc_publisher import GrpcPublisher
from .ws import DEFAULT_URL, Publisher, Subscriber, Worker

__all__ = [
    "DEFAULT_URL", "DELTA", "DISCARDABLE", "FLAGGED_HEADER_BYTES", "HEADER_BYTES", "Closed", "Frame", "Gap", "GrpcPublisher", "MaxWaitExceeded",
    "Notice",
    "Publisher", "Refused", "SluiceError", "Subscriber", "Unreachable", "Worker", "encode",
    "encode_flagged",
]
