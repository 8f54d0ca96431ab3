"""GrpcPublisher: publishes over the relay's gRPC `Publish` call, with its acknowledgements —
what WebSocket publishing does not have: it knows which frames are in the topic, and after a
lost connection or a relay restart it sends again exactly those that were not acknowledged."""
from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from typing import AsyncIterator

import grpc
import grpc.aio

from . import relay_pb2 as pb
from .errors import Closed, Refused, Unreachable
from .frames import Notice

_PUBLISH = "/sluice.v1.Relay/Publish"
_RETRY = {grpc.StatusCode.UNAVAILABLE}
# What says the call was not allowed at all (as an HTTP refusal before a WebSocket upgrade).
_REFUSALS = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
             grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}


class GrpcPublisher:
    """`await send(payload)` queues a frame and returns its sequence number; at most `window`
    frames are unacknowledged (send waits for acks beyond that: the relay's backpressure — it
    stops reading a full lossless topic, so acks stop). `await flush()` waits until every frame
    is in the topic. When the call fails with UNAVAILABLE (the relay went away or restarts) it
    is opened again (backoff 0.1 s doubling to 5 s) and the unacknowledged frames are sent again,
    in order, before any new one; `resent` counts them. The publisher names itself to the relay
    (`producer`, a random id unless given; keep it across restarts of your process to resume
    its numbering): a resent frame the topic already has — its ack was lost with the
    connection — is acked and not published again, so the topic gets every frame exactly once.
    Other errors end the publisher: send() and flush() raise Refused (NOT_FOUND,
    PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT) or Closed, with the gRPC status and the
    relay's message. events() yields slow_down, resume and
    dropped notices as Notice values.

    The first connection fails fast: if the relay cannot be reached within `connect_timeout`
    seconds, connect() raises Unreachable naming the address and gRPC's reason (and says so
    when the address is the relay's HTTP port), and nothing of the publisher is left running.
    Retrying UNAVAILABLE is only for a publisher that was connected once.

    ``async with await GrpcPublisher.connect(...) as pub:`` closes it at the end of the block:
    flushed on a normal exit, at once (what is unacknowledged is given up) on an exception.
    """

    def __init__(self, topic: str, target: str, token: str | None, window: int,
                 credentials: grpc.ChannelCredentials | None, producer: str | None = None,
                 first_sequence: int = 1, connect_timeout: float = 5.0) -> None:
        self.topic = topic
        self._connect_timeout = connect_timeout
        self._target = target
        self.producer = producer or uuid.uuid4().hex
        self._metadata: tuple[tuple[str, str], ...] = (("sluice-producer", self.producer),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self._credentials = credentials
        self._window = window
        self._channel: grpc.aio.Channel | None = None
        self._unacked: OrderedDict[int, pb.Item] = OrderedDict()
        self._outbox: asyncio.Queue[pb.PublishRequest | None] = asyncio.Queue()
        self._room = asyncio.Condition()
        self._events: asyncio.Queue[Notice] = asyncio.Queue(maxsize=1024)
        self._next = first_sequence
        self._error: Exception | None = None
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.acked = 0
        self.resent = 0
        self.reconnects = 0
        self.events_dropped = 0

    @classmethod
    async def connect(cls, topic: str, target: str = "127.0.0.1:7400", *,
                      token: str | None = None, window: int = 1024,
                      credentials: grpc.ChannelCredentials | None = None,
                      producer: str | None = None, first_sequence: int = 1,
                      connect_timeout: float = 5.0) -> "GrpcPublisher":
        """Opens the call to the relay's gRPC address `target` (`credentials`:
        grpc.ssl_channel_credentials(...) for TLS). `producer` and `first_sequence`: a process
        that restarts and knows where it was keeps its id and continues its numbering; the
        relay then ignores frames it already has. Raises Unreachable if the relay cannot be
        reached within `connect_timeout` seconds, Refused if it refuses the call."""
        p = cls(topic, target, token, window, credentials, producer, first_sequence,
                connect_timeout)
        p._task = asyncio.create_task(p._run())
        try:
            await p._opened.wait()
        except BaseException:  # (cancelled: nothing of it may outlive the caller's wait)
            await p._abort()
            raise
        if p._error is not None:
            await p._abort()
            raise p._error
        return p

    async def __aenter__(self) -> "GrpcPublisher":
        return self

    async def __aexit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            await self.close()
        else:
            await self._abort()

    async def _abort(self) -> None:
        """Ends the call and its task at once."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # (its cancellation, or what ended it)
                pass
        if self._channel is not None:
            await self._channel.close()

    def _open_channel(self) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(self._target, self._credentials)
        return grpc.aio.insecure_channel(self._target)

    async def _requests(self, resend: list[pb.Item]) -> AsyncIterator[pb.PublishRequest]:
        first = True
        # Each call reads an outbox of its own (a failed call's generator may still wait on
        # the old one); everything the old one held is unacknowledged, so in `resend`.
        outbox = self._outbox
        for item in resend:
            if first:
                item = pb.Item(topic=self.topic, payload=item.payload, sequence=item.sequence,
                               timestamp_ns=item.timestamp_ns)
                first = False
            yield pb.PublishRequest(item=item)
        while True:
            r = await outbox.get()
            if r is None:
                return
            if first:
                r.item.topic = self.topic
                first = False
            yield r

    async def _end_call(self, call: grpc.aio.StreamStreamCall,
                        outbox: asyncio.Queue[pb.PublishRequest | None]) -> None:
        """Ends a call and what gRPC runs for it: its request iterator (gRPC's task reading it
        would otherwise wait on the outbox for ever) and its channel."""
        outbox.put_nowait(None)
        call.cancel()
        await asyncio.sleep(0)  # (gRPC's reader takes the end)
        if self._channel is not None:
            await self._channel.close()

    def _unreachable(self, e: grpc.aio.AioRpcError) -> Unreachable:
        details = e.details() or e.code().name
        if "http1" in details or "HTTP/1" in details:
            details += " (that is an HTTP port: GrpcPublisher takes the relay's gRPC address, " \
                       "server.grpc_port, 7400 by default)"
        return Unreachable(self._target, details)

    async def _run(self) -> None:
        backoff = 0.1
        attempt = 0
        first_deadline = asyncio.get_running_loop().time() + self._connect_timeout
        while True:
            attempt += 1
            self._channel = self._open_channel()
            self._outbox = outbox = asyncio.Queue()  # (see _requests)
            resend = list(self._unacked.values())
            if attempt > 1:
                self.resent += len(resend)
                self.reconnects += 1
            stub = self._channel.stream_stream(
                _PUBLISH, request_serializer=pb.PublishRequest.SerializeToString,
                response_deserializer=pb.PublishEvent.FromString)
            call = stub(self._requests(resend), metadata=self._metadata)
            try:
                await call.wait_for_connection()
                self._opened.set()
                backoff = 0.1
                async for e in call:
                    await self._event(e)
                await self._end_call(call, outbox)
                return  # finished: flush() closed it
            except asyncio.CancelledError:
                await self._end_call(call, outbox)
                raise
            except grpc.aio.AioRpcError as e:
                await self._end_call(call, outbox)
                never_opened = not self._opened.is_set()
                out_of_time = (never_opened and
                               asyncio.get_running_loop().time() + backoff > first_deadline)
                if e.code() in _RETRY and self._error is None and not out_of_time:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                fail: Exception = (self._unreachable(e) if never_opened and e.code() in _RETRY
                                   else Refused(e.code().name, e.details() or "")
                                   if e.code() in _REFUSALS else
                                   Closed(e.code().name, e.details() or ""))
                self._error = fail
                self._opened.set()
                async with self._room:
                    self._room.notify_all()
                return

    async def _event(self, e: pb.PublishEvent) -> None:
        kind = e.WhichOneof("event")
        if kind == "ack":
            async with self._room:
                while self._unacked and next(iter(self._unacked)) <= e.ack.sequence:
                    self._unacked.popitem(last=False)
                    self.acked += 1
                self._room.notify_all()
            return
        if kind == "slow_down":
            notice = Notice("slow_down", {"warning": "slow_down", "topic": e.slow_down.topic,
                                          "queue_bytes": e.slow_down.queue_bytes,
                                          "limit_bytes": e.slow_down.limit_bytes,
                                          "reason": e.slow_down.reason, "stage": e.slow_down.stage})
        elif kind == "resume":
            notice = Notice("resume", {"resume": True, "queue_bytes": e.resume.queue_bytes,
                                       "stage": e.resume.stage})
        else:
            notice = Notice("dropped", {"dropped": True, "frame_index": e.dropped.sequence,
                                        "reason": e.dropped.reason, "detail": e.dropped.detail})
        if self._events.full():
            self._events.get_nowait()
            self.events_dropped += 1
        self._events.put_nowait(notice)

    async def send(self, payload: bytes, *, timestamp_ns: int = 0, flags: int = 0) -> int:
        """Queues one frame; returns its sequence number (1, 2, ...). `flags`: ``DELTA`` on a
        video's delta frames."""
        async with self._room:
            await self._room.wait_for(lambda: len(self._unacked) < self._window or self._error)
        if self._error is not None:
            raise self._error
        seq = self._next
        self._next += 1
        item = pb.Item(payload=bytes(payload), sequence=seq, timestamp_ns=timestamp_ns,
                       flags=flags)
        self._unacked[seq] = item
        await self._outbox.put(pb.PublishRequest(item=item))
        return seq

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    async def flush(self) -> None:
        """Waits until every frame sent so far is in the topic."""
        async with self._room:
            await self._room.wait_for(lambda: not self._unacked or self._error is not None)
        if self._error is not None:
            raise self._error

    async def events(self) -> AsyncIterator[Notice]:
        """The relay's notices, until the publisher ends."""
        while not (self._task and self._task.done() and self._events.empty()):
            try:
                yield await asyncio.wait_for(self._events.get(), 0.5)
            except asyncio.TimeoutError:
                continue

    async def close(self) -> None:
        """Flushes, then ends the call."""
        await self.flush()
        await self._outbox.put(None)
        if self._task:
            await self._task
