"""Publisher, Subscriber and Worker over the relay's WebSocket endpoints (docs/protocol.md),
on python3-websockets and asyncio."""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import signal
import ssl as ssl_module
import urllib.parse
import uuid
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Union

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .errors import Closed, MaxWaitExceeded, Refused
from .frames import (FLAGGED_HEADER_BYTES, HEADER, Frame, Gap, Notice, _unpack_flagged,
                     encode_flagged)

DEFAULT_URL = "ws://127.0.0.1:7401"
# Publisher events kept for events() when nobody reads them; older ones are dropped, counted.
MAX_QUEUED_EVENTS = 1024


def _endpoint(url: str, path: str, **params: Any) -> str:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return url.rstrip("/") + path + (("?" + query) if query else "")


def _subprotocols(token: str | None) -> list[str] | None:
    # (A browser can only send its token this way; the header would do as well here.)
    return ["sluice", f"sluice.bearer.{token}"] if token else None


def _refused(e: InvalidHandshake) -> Refused | None:
    """The relay's refusal of an upgrade as Refused: its status and reason, from the first
    answer (the reason rides in the Sluice-Refusal header as well as the body, since websockets
    before 14 keeps only the headers); None if `e` is no HTTP refusal (a handshake cut short)."""
    response = getattr(e, "response", None)  # websockets >= 14: InvalidStatus
    status = getattr(e, "status_code", None) or getattr(response, "status_code", None)
    if status is None:
        return None
    headers = getattr(e, "headers", None) or getattr(response, "headers", None)
    reason = urllib.parse.unquote(headers.get("Sluice-Refusal", "")) if headers else ""
    if not reason:
        reason = (getattr(response, "body", None) or b"").decode(errors="replace").strip()
    return Refused(int(status), reason)


async def _open(uri: str, token: str | None, ssl: ssl_module.SSLContext | None,
                max_size: int | None = None) -> websockets.WebSocketClientProtocol:
    # (Only what websockets' client API has kept from 10 to 17: connect's arguments, send,
    # recv, iteration, close, close_code, close_reason, transport; see _response_headers and
    # _is_closed for the two that changed.)
    try:
        return await websockets.connect(uri, subprotocols=_subprotocols(token), ssl=ssl,
                                        max_size=max_size, ping_interval=None)
    except InvalidHandshake as e:
        refused = _refused(e)
        if refused is None:
            raise
        raise refused from None


def _response_headers(ws: Any) -> Any:
    """The upgrade answer's headers (websockets < 14: response_headers; >= 14: response)."""
    headers = getattr(ws, "response_headers", None)
    return headers if headers is not None else ws.response.headers


def _is_closed(ws: Any) -> bool:
    """Whether the connection is closed (websockets < 14: .closed; >= 14: .state)."""
    return getattr(ws.state, "name", "") == "CLOSED"


def _closed(ws: websockets.WebSocketClientProtocol, last_error: Notice | None = None) -> Closed:
    code = ws.close_code if ws.close_code is not None else 1006
    reason = ws.close_reason or ""
    if code == 1013:
        return MaxWaitExceeded(code, reason, last_error.frame_index if last_error else None)
    return Closed(code, reason)


# Close codes after which a reconnecting Publisher opens a new session: the relay stopping
# (1001), the connection lost (1006), the relay's own failure (1011), a restart (1012).
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012})


class Publisher:
    """Publishes frames to a topic over `/v1/ws/publish/{topic}`.

    `await send(payload)` applies the relay's backpressure: it waits while the relay has told
    this producer to slow down (a full lossless topic: it stops reading the socket until the
    topic drains to half its budget) and while the socket's buffer is full. When a frame waited
    `max_wait_ms` the relay ends the session and send() raises MaxWaitExceeded naming that
    setting and the frame. `events()` yields the relay's notices (slow_down, resume, dropped,
    error) as they come.

    With `reconnect=True` the relay acknowledges frames (`{"ack": i}`: every frame up to i is in
    the topic) and the publisher names itself (`producer`, a random id unless given): it keeps
    the frames not yet acknowledged (at most `window_bytes`; send() waits beyond), and when the
    connection is lost or the relay restarts it connects again (backoff 0.1 s doubling to 2 s,
    for up to `reconnect_for` seconds) and sends them again, in order — the relay puts a frame it
    already has in once. close() then waits until every frame is acknowledged. Not thread-safe:
    one task sends at a time.
    """

    def __init__(self, ws: websockets.WebSocketClientProtocol, topic: str, *,
                 again: dict[str, Any] | None = None, window_bytes: int = 8 << 20) -> None:
        self.topic = topic
        self._ws = ws
        self._next = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._events: deque[Notice] = deque()
        self._event_ready = asyncio.Event()
        self._last_error: Notice | None = None
        self._again_with = again  # reconnecting: how to connect again
        self._window_bytes = window_bytes
        self._unacked: deque[tuple[int, bytes]] = deque()  # (index, frame) not yet acknowledged
        self._unacked_bytes = 0
        self._acked = asyncio.Event()
        self.sent = 0
        self.slow_downs = 0
        self.resumes = 0
        self.acked = 0
        self.reconnects = 0
        self.resent = 0
        self.events_dropped = 0  # notices nobody read in time (beyond MAX_QUEUED_EVENTS)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, topic: str, url: str = DEFAULT_URL, *, token: str | None = None,
                      ssl: ssl_module.SSLContext | None = None, reconnect: bool = False,
                      producer: str | None = None, reconnect_for: float = 30.0,
                      window_bytes: int = 8 << 20) -> "Publisher":
        """Opens a publisher on `topic` at the relay's WebSocket address `url`. Raises Refused
        (the relay's status and reason) or OSError (nothing listens there)."""
        path = f"/v1/ws/publish/{urllib.parse.quote(topic, safe='')}"
        if not reconnect:
            uri = _endpoint(url, path, header=FLAGGED_HEADER_BYTES)
            return cls(await _open(uri, token, ssl), topic)
        uri = _endpoint(url, path, header=FLAGGED_HEADER_BYTES,
                        producer=producer or uuid.uuid4().hex, acks=1)
        again = {"uri": uri, "token": token, "ssl": ssl, "for": reconnect_for}
        return cls(await _open(uri, token, ssl), topic, again=again, window_bytes=window_bytes)

    @property
    def slowed(self) -> bool:
        """The relay has told this producer to slow down and not yet to resume."""
        return not self._flowing.is_set()

    @property
    def unacknowledged(self) -> int:
        """Frames sent and not yet acknowledged (reconnecting publishers; else 0)."""
        return len(self._unacked)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if not isinstance(message, str):
                    continue
                event = json.loads(message)
                if "ack" in event:
                    self._prune(int(event["ack"]))
                    continue
                notice = Notice.of(event)
                if notice.kind == "slow_down" and "stage" not in notice.data:
                    self.slow_downs += 1
                    self._flowing.clear()
                elif notice.kind == "resume" and "stage" not in notice.data:
                    self.resumes += 1
                    self._flowing.set()
                elif notice.kind == "error":
                    self._last_error = notice
                if len(self._events) >= MAX_QUEUED_EVENTS:
                    self._events.popleft()
                    self.events_dropped += 1
                self._events.append(notice)
                self._event_ready.set()
        except ConnectionClosed:
            pass
        finally:
            self._flowing.set()  # (a waiting send() sees the close)
            self._acked.set()
            self._event_ready.set()

    def _prune(self, through: int) -> None:
        while self._unacked and self._unacked[0][0] <= through:
            self._unacked_bytes -= len(self._unacked.popleft()[1])
            self.acked += 1
        self._acked.set()

    def _lost(self) -> bool:
        """The session ended in a way a reconnecting publisher rides out."""
        return self._again_with is not None and _is_closed(self._ws) and (
            self._ws.close_code is None or self._ws.close_code in RECONNECT_CODES)

    async def _again(self) -> None:
        """Connects again and sends every unacknowledged frame again, in order."""
        assert self._again_with is not None
        again = self._again_with
        loop = asyncio.get_running_loop()
        give_up = loop.time() + float(again["for"])
        delay = 0.1
        while True:
            try:
                ws = await _open(again["uri"], again["token"], again["ssl"])
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
                # (a relay restarting may accept and close before its answer: InvalidMessage)
                if loop.time() + delay > give_up:
                    raise Closed(1006, f"the relay did not come back within reconnect_for "
                                       f"({again['for']} s): {e}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            await self._reader
            self._ws = ws
            self.reconnects += 1
            self._flowing.set()
            self._reader = asyncio.create_task(self._read())
            try:
                for _, frame in list(self._unacked):
                    await ws.send(frame)
                    self.resent += 1
                return
            except ConnectionClosed:
                await self._reader
                if not self._lost():
                    raise _closed(self._ws, self._last_error) from None

    async def send(self, payload: bytes | bytearray | memoryview, *, frame_index: int | None = None,
                   timestamp_ns: int = 0, flags: int = 0) -> int:
        """Sends one frame; returns its index (default: the previous one plus one). A
        timestamp of 0 lets the relay stamp the frame's arrival. `flags`: ``DELTA`` on a
        video's delta frames (a subscriber that lost frames resumes at a keyframe, and a new
        one starts at the latest keyframe). `payload` may be any buffer (bytes, a numpy
        array's memoryview)."""
        index = self._next if frame_index is None else frame_index
        frame = encode_flagged(index, timestamp_ns, flags, payload)
        if self._again_with is not None:
            await self._until_acked(lambda: not self._unacked or
                                    self._unacked_bytes + len(frame) <= self._window_bytes)
            self._unacked.append((index, frame))
            self._unacked_bytes += len(frame)
        while True:
            if not self._flowing.is_set():
                await self._flowing.wait()
            try:
                if _is_closed(self._ws):
                    raise ConnectionClosed(None, None)
                await self._ws.send(frame)
                break
            except ConnectionClosed:
                await self._reader
                if not self._lost():
                    raise _closed(self._ws, self._last_error) from None
                await self._again()  # (sends this frame again with the others)
                break
        self._next = index + 1
        self.sent += 1
        return index

    async def flush(self) -> None:
        """Reconnecting publishers: waits until every frame sent is acknowledged (connecting
        again meanwhile if need be). Others: returns at once."""
        if self._again_with is not None:
            await self._until_acked(lambda: not self._unacked)

    async def _until_acked(self, enough: Callable[[], bool]) -> None:
        """Waits for acknowledgements until `enough()`, connecting again if the session is lost
        (a reconnecting publisher); raises if it ended otherwise."""
        while not enough():
            if self._lost():
                await self._again()
                continue
            if _is_closed(self._ws):
                raise _closed(self._ws, self._last_error)
            self._acked.clear()
            await self._acked.wait()

    async def events(self) -> AsyncIterator[Notice]:
        """The relay's notices to this producer, in order, until the session ends."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self._reader.done():
                return
            self._event_ready.clear()
            await self._event_ready.wait()

    async def close(self) -> None:
        """Ends the session once what was sent has left (reconnecting: once it is all
        acknowledged)."""
        try:
            await self.flush()
        finally:
            await self._ws.close(1000, "done")
            await self._reader

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, kind: object, error: object, traceback: object) -> None:
        await self.close()


Received = Union[Frame, Gap]


class Subscriber:
    """Subscribes to a topic over `/v1/ws/subscribe/{topic}`: `async for m in sub` yields
    Frame and Gap values in the order the relay sent them. The iteration ends when the relay
    closes the topic normally (1000: it is shutting down) and raises Closed otherwise (4008:
    disconnected as a stalled consumer; 1008: evicted; 1006: the connection was lost).

    `position` is the topic's position of the next frame it expects and `epoch` the topic's
    run (both from the relay). With `reconnect=True` any end but close() makes the connection
    again (backoff 0.25 s doubling to 5 s) and resumes at `position`: on a topic that retains
    frames (`retain_items`) it continues with the very next frame, nothing lost or repeated;
    frames no longer retained come as one Gap(n, "retention"), and a relay that restarted
    meanwhile as Gap(None, "relay_restart") (how many were missed is not known).

    `window` (default 16; 0: none): at most this many frames are on their way to the program
    and not yet processed — a frame counts as processed when the loop asks for the next one.
    The rest wait in the relay, where a real-time topic skips them (a Gap) and a lossless one
    holds its producer back: a busy consumer gets frames at most `window` (plus the topic's
    depth) behind, whatever the kernel's and the websockets library's buffers hold.
    """

    def __init__(self, uri: str, topic: str, token: str | None, ssl: ssl_module.SSLContext | None,
                 reconnect: bool, window: int = 0) -> None:
        self.topic = topic
        self._uri = uri
        self._token = token
        self._ssl = ssl
        self._reconnect = reconnect
        self._ws: websockets.WebSocketClientProtocol | None = None
        self._closing = False
        self.received = 0
        self.lost = 0
        self.reconnects = 0
        self.epoch: str | None = None
        self.position = 0
        self._window = window
        self._processed = 0  # frames of this connection processed
        self._acked = 0  # of them acknowledged to the relay
        self._pending = False  # a frame was returned and not yet counted as processed

    @classmethod
    async def connect(cls, topic: str, url: str = DEFAULT_URL, *, name: str | None = None,
                      depth: int | None = None, token: str | None = None,
                      ssl: ssl_module.SSLContext | None = None,
                      reconnect: bool = False, window: int = 16) -> "Subscriber":
        if window < 0:
            raise ValueError(f"window must be 0 (none) or a number of frames, not {window}")
        uri = _endpoint(url, f"/v1/ws/subscribe/{urllib.parse.quote(topic, safe='')}",
                        name=name, depth=depth, header=FLAGGED_HEADER_BYTES,
                        window=window or None)
        sub = cls(uri, topic, token, ssl, reconnect, window)
        sub._opened(await _open(uri, token, ssl))
        return sub

    def _opened(self, ws: websockets.WebSocketClientProtocol) -> None:
        self._ws = ws
        self._processed = self._acked = 0  # (a window is per connection)
        self._pending = False
        headers = _response_headers(ws)
        self.epoch = headers.get("Sluice-Epoch")
        self.position = int(headers.get("Sluice-Position", self.position))

    def __aiter__(self) -> "Subscriber":
        return self

    async def __anext__(self) -> Received:
        # (The frame path first and short: it runs once per frame.)
        if self._pending:  # the frame returned last has been processed
            self._pending = False
            self._processed += 1
            if self._processed - self._acked >= (self._window + 1) // 2:
                await self._ack()
        while True:
            try:
                message = await self._ws.recv()  # type: ignore[union-attr]
            except ConnectionClosed:
                await self._ended()
                continue  # reconnected (the relay says what was missed, if anything)
            if message.__class__ is bytes:
                self.received += 1
                self.position += 1
                index, stamp, flags, _ = _unpack_flagged(message)
                self._pending = self._window != 0
                return Frame(index, stamp, memoryview(message)[FLAGGED_HEADER_BYTES:], flags)
            gap = self._event(message)
            if gap is not None:
                return gap
            # (errors about what we sent; subscribers send nothing: none expected)

    async def _ack(self) -> None:
        """Tells the relay how many frames were processed (every half window: the relay, which
        keeps at most `window` unacknowledged, never waits on an acknowledgement not sent)."""
        self._acked = self._processed
        try:
            await self._ws.send(json.dumps({"ack": self._acked}))  # type: ignore[union-attr]
        except ConnectionClosed:
            pass  # (the next recv() sees the end)

    async def _ended(self) -> None:
        """The connection ended: stop, raise, or connect again (reconnect=True)."""
        assert self._ws is not None
        if self._closing or (self._ws.close_code == 1000 and not self._reconnect):
            raise StopAsyncIteration
        if not self._reconnect:
            raise _closed(self._ws)
        await self._again()

    def _event(self, message: str | bytes) -> Gap | None:
        event = json.loads(message)
        if "gap" not in event:
            return None
        count = int(event["gap"])
        reason = str(event.get("reason", ""))
        self.lost += count
        if reason != "bridge":  # (lost between relays: never had a position here)
            self.position += count
        return Gap(None if reason == "relay_restart" else count, reason)

    async def _again(self) -> None:
        delay = 0.25
        while True:
            uri = self._uri
            if self.epoch:
                uri += ("&" if "?" in uri else "?") + urllib.parse.urlencode(
                    {"epoch": self.epoch, "from": self.position})
            try:
                self._opened(await _open(uri, self._token, self._ssl))
                self.reconnects += 1
                return
            except (OSError, Refused, InvalidHandshake, asyncio.TimeoutError):
                # (a relay restarting may accept and close before its answer: InvalidMessage)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Leaves the topic."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close(1000, "done")

    async def __aenter__(self) -> "Subscriber":
        return self

    async def __aexit__(self, kind: object, error: object, traceback: object) -> None:
        await self.close()


Handler = Callable[[Frame], Union[bytes, bytearray, memoryview, Awaitable[Union[bytes, bytearray, memoryview]]]]


class Worker:
    """A worker of a topic's processing stage over `/v1/ws/work/{topic}` — how a Python model
    (a GPU process, say) joins a stage:

        worker = Worker("detect", concurrency=2)

        @worker.handler
        async def infer(frame: Frame) -> bytes:
            return model(frame.array("uint8", (480, 640, 3)))

        await worker.run()

    The relay sends at most `concurrency` frames unanswered (the protocol's credits); each is
    handled in its own task and answered with a result frame carrying its header, which the
    relay publishes to the stage's results topic. A handler that raises fails that frame: the
    relay gets {"frame_index": n, "error": str(exception)} and re-routes the frame or drops it,
    telling its producer. drain() (and SIGTERM, when run() installs the handler) stops taking
    frames — those still arriving are answered "draining" so the relay gives them to another
    worker — lets the ones in flight finish and closes.

    A coroutine function as handler runs on the event loop; a plain function runs in a pool of
    `concurrency` threads, so a blocking model (a GPU call, say) leaves the loop free and the
    frames in flight run side by side. Cancelling run() closes the connection at once: the
    relay gives the frames this worker held to another one (or drops them, telling their
    producer) instead of waiting `stage_task_timeout_ms` for them. ``async with Worker(...)``
    does the same at the end of the block if run() is still going.
    """

    def __init__(self, topic: str, url: str = DEFAULT_URL, *, name: str = "python",
                 concurrency: int = 1, token: str | None = None,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        if not 1 <= concurrency <= 1024:
            raise ValueError("concurrency is 1 to 1024")
        self.topic = topic
        self.name = name
        self.concurrency = concurrency
        self._uri = _endpoint(url, f"/v1/ws/work/{urllib.parse.quote(topic, safe='')}",
                              name=name, concurrency=concurrency)
        self._token = token
        self._ssl = ssl
        self._handler: Handler | None = None
        self._draining = False
        self._ws: websockets.WebSocketClientProtocol | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = 0  # frames handed to a handler
        self._answered = 0  # of those, answered (or whose answer could not be sent)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: asyncio.Task[None] | None = None
        self.joined: dict[str, Any] = {}
        self.processed = 0
        self.failed = 0
        self.refused_while_draining = 0

    def handler(self, fn: Handler) -> Handler:
        """Decorates the function that turns a frame into its result (sync or async)."""
        self._handler = fn
        return fn

    def drain(self) -> None:
        """Stops taking frames; run() returns once those in flight are answered."""
        self._draining = True
        if self._ws is not None and self._answered == self._started:
            asyncio.ensure_future(self._ws.close(1000, "drained"))

    async def run(self, *, handle_sigterm: bool = True) -> None:
        """Joins the stage and serves until drain(), SIGTERM or the relay closes. Raises Refused
        if the relay refuses the worker (no such stage, no permission, worker limit) and Closed
        if it ends the session for another reason than a drain."""
        if self._handler is None:
            raise RuntimeError("no handler: decorate one with @worker.handler")
        loop = asyncio.get_running_loop()
        if handle_sigterm:
            loop.add_signal_handler(signal.SIGTERM, self.drain)
        self._running = asyncio.current_task()
        if not inspect.iscoroutinefunction(self._handler):
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"sluice-{self.name}")
        try:
            self._ws = await _open(self._uri, self._token, self._ssl)
            try:
                async for message in self._ws:
                    if isinstance(message, str):
                        event = json.loads(message)
                        if "stage" in event:
                            self.joined = event
                        continue
                    frame = Frame.decode(message)
                    if self._draining:
                        self.refused_while_draining += 1
                        await self._ws.send(json.dumps(
                            {"frame_index": frame.index, "error": "draining: the worker is stopping"}))
                        continue
                    self._started += 1
                    task = asyncio.create_task(self._handle(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except ConnectionClosed:
                pass
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            code = self._ws.close_code
            if not self._draining and code not in (1000, None):
                raise _closed(self._ws)
        except asyncio.CancelledError:
            # At once: the relay sees the connection end and hands on what this worker held.
            for task in self._tasks:
                task.cancel()
            if self._ws is not None and self._ws.transport is not None:
                self._ws.transport.abort()
            raise
        finally:
            self._running = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if handle_sigterm:
                loop.remove_signal_handler(signal.SIGTERM)

    async def __aenter__(self) -> "Worker":
        return self

    async def __aexit__(self, kind: object, error: object, traceback: object) -> None:
        running = self._running
        if running is not None and running is not asyncio.current_task() and not running.done():
            running.cancel()
            try:
                await running
            except asyncio.CancelledError:
                pass

    async def _handle(self, frame: Frame) -> None:
        assert self._handler is not None and self._ws is not None
        try:
            if self._pool is not None:  # (a plain function: in the pool, the loop stays free)
                result = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._handler, frame)
            else:
                result = self._handler(frame)
            if inspect.isawaitable(result):
                result = await result
            answer: bytes | str = HEADER.pack(frame.index, frame.timestamp_ns) + bytes(result)
            self.processed += 1
        except Exception as e:  # the frame fails; the worker goes on
            answer = json.dumps({"frame_index": frame.index, "error": str(e) or type(e).__name__})
            self.failed += 1
        try:
            await self._ws.send(answer)
        except ConnectionClosed:
            return
        finally:
            self._answered += 1
        # The last frame in flight of a draining worker closes. (Counted, not read from the task
        # set: two handlers resuming in one turn of the loop would each still see the other.)
        if self._draining and self._answered == self._started:
            await self._ws.close(1000, "drained")
