"""The WebSocket server: many independent streams over one socket, as a Litestar WebSocket route.

Per connection there is one reader (the route handler: it parses client frames
and starts or cancels streams), one task per stream (it iterates the runtime's
``FlowStream`` and encodes each event once), and one writer task draining a
bounded queue of encoded frames. A slow client fills that queue and then the
stream tasks wait in ``put``, which suspends their flows: server memory stays
bounded per connection whatever the client's reading speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from litestar import Litestar, Router, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import WebSocketSendEvent

from llmbrick import (
    TERMINAL_TYPES,
    ErrorCode,
    FlowRuntime,
    FlowStream,
    LLMBrickError,
    as_runtime,
)

from .codec import (
    Cancel,
    Problem,
    Start,
    cancelled_event,
    close_for,
    encode_event,
    encode_problem,
    failed_event,
    parse_client_frame,
    text_size_over,
)

__all__ = ["WebSocketServer", "create_router"]

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("llmbrick.websocket")

_BINARY_PROBLEM = Problem("binary frames are not supported; send JSON text frames")


@dataclass(frozen=True, slots=True)
class _Limits:
    max_streams: int
    max_message_size: int
    max_protocol_errors: int
    queue_size: int
    close_timeout: float


class _Close(Exception):
    """Raised by the reader to end the connection with the close code for ``code``."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.value)
        self.code = code


class _Stream:
    """One client stream of a connection."""

    __slots__ = ("cancelled", "id", "sent", "started", "stream", "task")

    def __init__(self, stream_id: str, stream: FlowStream) -> None:
        self.id = stream_id
        self.stream = stream
        self.sent = 0
        self.started = False
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None


class _Outbox:
    """Encoded frames on their way out: bounded, many producers, one consumer (the writer).

    An ``asyncio.Queue`` with the per-event path trimmed: a ``put`` that finds
    room and a ``get`` that finds a frame touch only a deque.
    """

    __slots__ = ("_frames", "_getter", "_limit", "_loop", "_putters")

    def __init__(self, limit: int) -> None:
        self._frames: deque[str | None] = deque()
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()

    async def put(self, frame: str | None) -> None:
        """Append ``frame``, first waiting while the outbox is full."""
        frames = self._frames
        while len(frames) >= self._limit:
            waiter = self._loop.create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_putter()  # pass on a wakeup this producer will not use
                raise
        frames.append(frame)
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    async def get(self) -> str | None:
        """The oldest frame, waiting for one if need be."""
        frames = self._frames
        while not frames:
            self._getter = getter = self._loop.create_future()
            await getter
        frame = frames.popleft()
        if self._putters:
            self._wake_putter()
        return frame

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters:
            waiter = putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _Connection:
    """The state of one socket: its live streams, its outgoing queue and its writer."""

    __slots__ = (
        "_closing",
        "_errors",
        "_failure",
        "_limits",
        "_live",
        "_outbox",
        "_owner",
        "_running",
        "_runtime",
        "_socket",
        "_writer",
    )

    def __init__(
        self, socket: WebSocket[Any, Any, Any], runtime: FlowRuntime, limits: _Limits
    ) -> None:
        self._socket = socket
        self._runtime = runtime
        self._limits = limits
        self._live: dict[str, _Stream] = {}
        self._running: dict[asyncio.Task[None], _Stream] = {}
        self._outbox = _Outbox(limits.queue_size)
        self._errors = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Accept the socket and serve it until the client leaves or the server closes it."""
        owner = self._owner = asyncio.current_task()
        assert owner is not None
        try:
            await self._socket.accept()
        except (OSError, WebSocketDisconnect):
            return  # the client left during the handshake
        self._writer = asyncio.create_task(self._write())
        reason: ErrorCode | None = None
        try:
            try:
                await self._read()
            except _Close as exc:
                reason = exc.code
            except asyncio.CancelledError:
                # Only the cancel that _fail() sent is ours to absorb.
                if self._failure is None or owner.uncancel() > 0:
                    raise
                reason = ErrorCode.INTERNAL
            except Exception as exc:
                self._failure = exc
                reason = ErrorCode.INTERNAL
            if self._failure is not None:
                _log.error(
                    "websocket connection failed; closing it with 1011", exc_info=self._failure
                )
            await self._stop_streams()
            if reason is not None:
                await self._flush()
                await self._close(reason)
        finally:
            await self._stop_streams()
            self._writer.cancel()
            await asyncio.wait([self._writer])

    async def _read(self) -> None:
        receive = self._socket.receive
        limit = self._limits.max_message_size
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect: the client left or the protocol layer closed
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > limit:
                    raise _Close(ErrorCode.RESOURCE_EXHAUSTED)
                await self._problem(_BINARY_PROBLEM)
                continue
            if text_size_over(text, limit):
                raise _Close(ErrorCode.RESOURCE_EXHAUSTED)
            command = parse_client_frame(text)
            if type(command) is Start:
                await self._start(command)
            elif type(command) is Cancel:
                self._cancel(command.id)
            else:
                assert isinstance(command, Problem)
                await self._problem(command)

    async def _problem(self, problem: Problem) -> None:
        self._errors += 1
        await self._outbox.put(encode_problem(problem.message, problem.id))
        if self._errors >= self._limits.max_protocol_errors:
            raise _Close(ErrorCode.INVALID_ARGUMENT)

    async def _start(self, command: Start) -> None:
        stream_id = command.id
        if stream_id in self._live:
            message = f"stream id {stream_id!r} is already running; use a new id per stream"
            await self._problem(Problem(message, stream_id))
            return
        cap = self._limits.max_streams
        try:
            if len(self._live) >= cap:
                raise LLMBrickError(
                    f"this connection runs its maximum of {cap} streams; "
                    "wait for one to end or open another connection",
                    code=ErrorCode.RESOURCE_EXHAUSTED,
                    details={"maxStreams": cap},
                )
            flow_stream = self._runtime.start(None, command.request, transport="websocket")
        except LLMBrickError as exc:
            # As FlowRuntime.run does: a stream that cannot start is one terminal error event.
            await self._outbox.put(encode_event(stream_id, failed_event(exc.to_info(), 1)))
            return
        record = _Stream(stream_id, flow_stream)
        task = asyncio.create_task(self._pump(record))
        record.task = task
        self._live[stream_id] = record
        self._running[task] = record
        task.add_done_callback(self._finished)

    def _cancel(self, stream_id: str) -> None:
        record = self._live.get(stream_id)
        # An unknown id is a stream that already ended: its terminal event is on its way.
        if record is None or record.cancelled:
            return
        record.cancelled = True
        if record.started and record.task is not None:
            record.task.cancel()

    async def _pump(self, record: _Stream) -> None:
        # A task cancelled before its first step never runs its body, so cancels
        # that come that early are flags checked here instead.
        record.started = True
        task = record.task
        try:
            async with aclosing(record.stream):
                if not (record.cancelled or self._closing):
                    await self._forward(record)
                    return
        except asyncio.CancelledError:
            if not record.cancelled or self._closing or task is None or task.uncancel() > 0:
                raise
        if self._closing:
            return
        # The client cancelled: the flow has been closed, its finally blocks ran.
        self._forget(record)
        await self._outbox.put(encode_event(record.id, cancelled_event(record.sent + 1)))

    async def _forward(self, record: _Stream) -> None:
        put = self._outbox.put
        stream_id = record.id
        async for event in record.stream:
            # The runtime only hands out events JSON can carry, so encoding cannot fail.
            frame = encode_event(stream_id, event)
            if event["type"] in TERMINAL_TYPES:
                # Free the id before the terminal event leaves, so the client may reuse it.
                self._forget(record)
            await put(frame)
            record.sent += 1

    def _forget(self, record: _Stream) -> None:
        if self._live.get(record.id) is record:
            del self._live[record.id]

    def _finished(self, task: asyncio.Task[None]) -> None:
        record = self._running.pop(task)
        self._forget(record)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self._closing:
            _log.error("stream %s failed while its connection closed", record.id, exc_info=exc)
        else:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None and self._owner is not None:
            self._failure = exc
            self._owner.cancel()

    async def _write(self) -> None:
        get = self._outbox.get
        send = self._socket.send
        while True:
            frame = await get()
            if frame is None:
                return
            message: WebSocketSendEvent = {"type": "websocket.send", "bytes": None, "text": frame}
            try:
                await send(message)
            except Exception:
                break  # the peer is gone; the reader is about to hear the disconnect
        # Keep draining so no stream waits on a queue that nobody empties.
        while await get() is not None:
            pass

    async def _stop_streams(self) -> None:
        self._closing = True
        if not self._running:
            return
        for task, record in self._running.items():
            if record.started:
                task.cancel()
        await asyncio.wait(list(self._running))

    async def _flush(self) -> None:
        """Let the writer send what is queued (an error frame explaining the close, say)."""
        writer = self._writer
        assert writer is not None
        try:
            async with asyncio.timeout(self._limits.close_timeout):
                await self._outbox.put(None)
                await asyncio.wait([writer])
        except TimeoutError:
            pass

    async def _close(self, reason: ErrorCode) -> None:
        code, text = close_for(reason)
        try:
            async with asyncio.timeout(self._limits.close_timeout):
                await self._socket.close(code, text)
        except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
            pass  # already closed or the peer stopped reading; uvicorn drops the transport


def create_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/ws",
    max_streams: int = 16,
    max_message_size: int = 1 << 20,
    max_protocol_errors: int = 5,
    queue_size: int = 32,
    close_timeout: float = 5.0,
) -> Router:
    """The WebSocket route for ``runtime``, to mount on any Litestar app.

    Args:
        runtime: the runtime shared with every other adapter.
        prefix: mounted under this path (e.g. ``"/api"``).
        path: the WebSocket endpoint's path.
        max_streams: streams one connection may run at once; more get a
            ``RESOURCE_EXHAUSTED`` terminal event.
        max_message_size: bytes a client frame may have; a bigger one closes
            the socket with 1009.
        max_protocol_errors: malformed frames tolerated per connection; the
            last one closes the socket with 1008.
        queue_size: encoded frames waiting per connection before streams wait.
        close_timeout: seconds to flush and close when the server closes a socket.

    Raises:
        ValueError: a limit is not positive.
    """
    for name, value in (
        ("max_streams", max_streams),
        ("max_message_size", max_message_size),
        ("max_protocol_errors", max_protocol_errors),
        ("queue_size", queue_size),
        ("close_timeout", close_timeout),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    limits = _Limits(max_streams, max_message_size, max_protocol_errors, queue_size, close_timeout)

    async def stream_socket(socket: WebSocket[Any, Any, Any]) -> None:
        await _Connection(socket, runtime, limits).serve()

    return Router(
        path=prefix or "/",
        route_handlers=[websocket(path, name="llmbrick-websocket")(stream_socket)],
    )


class WebSocketServer:
    """Serve flows over WebSocket, several streams per socket.

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime
            (see :func:`llmbrick.as_runtime`); a pipeline becomes the flow ``default``.
        prefix, path, max_streams, max_message_size, max_protocol_errors,
            queue_size, close_timeout: as :func:`create_router`.
        ping_interval: seconds between the server's keepalive pings (``None``:
            no pings); applies under :meth:`run`.
        ping_timeout: seconds a peer has to answer a ping before it is dropped
            and its streams cancelled; applies under :meth:`run`.
        compression: accept permessage-deflate when the client offers it; off by
            default because token frames are small and deflate costs CPU per
            frame and memory per connection (see docs/websocket.md).
    """

    def __init__(
        self,
        target: object = None,
        *,
        prefix: str = "",
        path: str = "/ws",
        max_streams: int = 16,
        max_message_size: int = 1 << 20,
        max_protocol_errors: int = 5,
        queue_size: int = 32,
        close_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: bool = False,
    ) -> None:
        self.runtime = as_runtime(target)
        self.router = create_router(
            self.runtime,
            prefix=prefix,
            path=path,
            max_streams=max_streams,
            max_message_size=max_message_size,
            max_protocol_errors=max_protocol_errors,
            queue_size=queue_size,
            close_timeout=close_timeout,
        )
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.compression = compression
        self.app = Litestar(
            route_handlers=[self.router],
            openapi_config=None,
            logging_config=None,
            on_shutdown=[self.runtime.aclose],
        )

    def flow(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Register a flow on this server's registry (see ``FlowRegistry.flow``)."""
        return self.runtime.registry.flow(name, **options)

    def uvicorn_options(self) -> dict[str, Any]:
        """The uvicorn settings that carry this server's size, keepalive and compression choices."""
        return {
            "ws": "auto",
            "ws_max_size": self.max_message_size,
            "ws_ping_interval": self.ping_interval,
            "ws_ping_timeout": self.ping_timeout,
            "ws_per_message_deflate": self.compression,
        }

    def run(self, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
        """Serve until interrupted, with uvloop and httptools when they are installed."""
        import uvicorn

        options: dict[str, Any] = {"log_level": "info", "loop": "auto", "http": "auto"}
        options.update(self.uvicorn_options())
        options.update(uvicorn_options)
        uvicorn.run(self.app, host=host, port=port, **options)
