"""The Python client of the Sluice relay (docs/python.md): Publisher, Subscriber and Worker over
WebSocket, GrpcPublisher over gRPC; frames, gap notices and the relay's notices as values."""
from .errors import Closed, MaxWaitExceeded, Refused, SluiceError
from .frames import HEADER_BYTES, Frame, Gap, Notice, encode
from .grpc_publisher import GrpcPublisher
from .ws import DEFAULT_URL, Publisher, Subscriber, Worker

__all__ = [
    "DEFAULT_URL", "HEADER_BYTES", "Closed", "Frame", "Gap", "GrpcPublisher", "MaxWaitExceeded",
    "Notice",
    "Publisher", "Refused", "SluiceError", "Subscriber", "Worker", "encode",
]
