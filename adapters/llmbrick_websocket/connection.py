"""One WebSocket connection: its handshake checks, its streams, and the writer that drains them.

Per connection there is one reader (it parses client frames and starts or
cancels streams), one task per stream (it iterates the runtime's
``FlowStream`` and encodes each event once), and one writer task draining a
``SendBuffer`` bounded in bytes. A slow client fills that buffer and then the
stream tasks wait in ``put``, which suspends their flows: server memory stays
bounded per connection whatever the client's reading speed.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.types import WebSocketSendEvent

from llmbrick import TERMINAL_TYPES, ErrorCode, FlowRuntime, LLMBrickError, RequestContext
from llmbrick.flow_control import SendBuffer
from llmbrick.stream import FlowStream, ResumedStream
from llmbrick_http import HttpSettings, context_from_scope

from .codec import (
    SUBPROTOCOL,
    Cancel,
    ListFlows,
    Problem,
    Resume,
    Start,
    bearer_from_subprotocols,
    close_for,
    encode_event,
    encode_flows,
    encode_problem,
    encode_started,
    failed_event,
    parse_client_frame,
    text_size_over,
)

__all__ = ["Limits", "serve_connection"]

_log = logging.getLogger("llmbrick.websocket")

_BINARY_PROBLEM = Problem("binary frames are not supported; send JSON text frames")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may do; see ``create_router`` for each."""

    max_streams: int
    max_message_size: int
    max_protocol_errors: int
    max_buffer_bytes: int
    close_timeout: float


class _Close(Exception):
    """Raised by the reader to end the connection with the close code for ``code``."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.value)
        self.code = code


class _Stream:
    """One client stream of a connection: one it started, or a kept one it resumed."""

    __slots__ = ("cancelled", "id", "sent", "started", "stream", "task", "token")

    def __init__(
        self, stream_id: str, stream: FlowStream | ResumedStream, token: str | None = None
    ) -> None:
        self.id = stream_id
        self.stream = stream
        self.token = token
        self.sent = 0
        self.started = False
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None


async def serve_connection(
    socket: WebSocket[Any, Any, Any], runtime: FlowRuntime, limits: Limits, http: HttpSettings
) -> None:
    """Check the handshake (origin, credentials), then serve the socket until it closes."""
    scope = socket.scope
    offered: list[str] = list(scope.get("subprotocols") or ())
    context = context_from_scope(scope, "websocket", credentials=bearer_from_subprotocols(offered))
    headers = context.headers
    if not http.origin_allowed(headers.get("origin"), headers.get("host")):
        await _refuse(socket, 403, "PERMISSION_DENIED", "this origin may not open a WebSocket here")
        return
    try:
        await runtime.authenticate(context)
    except LLMBrickError as exc:
        status = 401 if exc.code is ErrorCode.UNAUTHENTICATED else 403
        await _refuse(socket, status, exc.code.value, exc.message)
        return
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    await _Connection(socket, runtime, limits, context).serve(subprotocol)


async def _refuse(socket: WebSocket[Any, Any, Any], status: int, code: str, message: str) -> None:
    """Answer the handshake with an HTTP error instead of accepting the socket."""
    if "websocket.http.response" in (socket.scope.get("extensions") or {}):
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers = [(b"content-type", b"application/json")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="llmbrick"'))
        await socket.send(
            {"type": "websocket.http.response.start", "status": status, "headers": headers}
        )
        await socket.send(
            {"type": "websocket.http.response.body", "body": body, "more_body": False}
        )
        return
    # Servers without the extension answer a close before accept with 403.
    await socket.send({"type": "websocket.close", "code": 1008, "reason": ""})


class _Connection:
    """The state of one accepted socket: its live streams, its send buffer and its writer."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_context",
        "_errors",
        "_failure",
        "_limits",
        "_live",
        "_owner",
        "_running",
        "_runtime",
        "_socket",
        "_writer",
    )

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        runtime: FlowRuntime,
        limits: Limits,
        context: RequestContext,
    ) -> None:
        self._socket = socket
        self._runtime = runtime
        self._limits = limits
        self._context = context
        self._live: dict[str, _Stream] = {}
        self._running: dict[asyncio.Task[None], _Stream] = {}
        self._buffer: SendBuffer[str] = SendBuffer(limits.max_buffer_bytes)
        self._errors = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def serve(self, subprotocol: str | None) -> None:
        """Accept the socket and serve it until the client leaves or the server closes it."""
        owner = self._owner = asyncio.current_task()
        assert owner is not None
        try:
            await self._socket.accept(subprotocols=subprotocol)
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
            self._buffer.close()
            self._writer.cancel()
            await asyncio.wait([self._writer])

    async def _put(self, frame: str) -> None:
        await self._buffer.put(frame, len(frame))

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
                if command.id is not None:
                    await self._cancel(command.id)
                else:
                    await self._cancel_kept(command)
            elif type(command) is Resume:
                await self._resume(command)
            elif type(command) is ListFlows:
                # The socket was authenticated at the handshake, as GET /flows is per request.
                await self._put(encode_flows(self._runtime.registry.describe()))
            else:
                assert isinstance(command, Problem)
                await self._problem(command)

    async def _problem(self, problem: Problem) -> None:
        self._errors += 1
        await self._put(encode_problem(problem.message, problem.id))
        if self._errors >= self._limits.max_protocol_errors:
            raise _Close(ErrorCode.INVALID_ARGUMENT)

    async def _start(self, command: Start) -> None:
        if await self._taken(command.id):
            return
        try:
            self._check_room()
            flow_stream = self._runtime.start(
                None, command.request, context=self._context.derive("websocket")
            )
        except LLMBrickError as exc:
            # As FlowRuntime.run does: a stream that cannot start is one terminal error event.
            await self._put(encode_event(command.id, failed_event(exc.to_info(), 1)))
            return
        await self._run(_Stream(command.id, flow_stream))

    async def _resume(self, command: Resume) -> None:
        if await self._taken(command.id):
            return
        try:
            self._check_room()
            resumed = await self._runtime.resume(
                command.stream_id,
                command.after,
                context=self._context.derive("websocket"),
                token=command.token,
            )
        except LLMBrickError as exc:
            await self._put(encode_event(command.id, failed_event(exc.to_info(), 1)))
            return
        await self._run(_Stream(command.id, resumed, command.token))

    async def _taken(self, stream_id: str) -> bool:
        if stream_id not in self._live:
            return False
        message = f"stream id {stream_id!r} is already running; use a new id per stream"
        await self._problem(Problem(message, stream_id))
        return True

    def _check_room(self) -> None:
        cap = self._limits.max_streams
        if len(self._live) >= cap:
            raise LLMBrickError(
                f"this connection runs its maximum of {cap} streams; "
                "wait for one to end or open another connection",
                code=ErrorCode.RESOURCE_EXHAUSTED,
                details={"maxStreams": cap},
            )

    async def _run(self, record: _Stream) -> None:
        task = asyncio.create_task(self._pump(record))
        record.task = task
        self._live[record.id] = record
        self._running[task] = record
        task.add_done_callback(self._finished)
        await self._put(encode_started(record.id, record.stream.id))

    async def _cancel(self, stream_id: str) -> None:
        record = self._live.get(stream_id)
        # An unknown id is a stream that already ended: its terminal event is on its way.
        if record is None or record.cancelled:
            return
        record.cancelled = True
        stream = record.stream
        if isinstance(stream, FlowStream):
            # The flow stops; its CANCELLED terminal event comes through the stream.
            stream.cancel()
            return
        try:  # a resumed stream: cancel the flow it reads, wherever that runs
            await self._runtime.cancel(stream.id, context=self._context, token=record.token)
        except LLMBrickError:
            pass  # it ended meanwhile: its terminal event is on its way

    async def _cancel_kept(self, command: Cancel) -> None:
        assert command.stream_id is not None
        try:
            await self._runtime.cancel(
                command.stream_id, context=self._context, token=command.token
            )
        except LLMBrickError as exc:
            await self._put(encode_problem(exc.message, code=exc.code.value))

    async def _pump(self, record: _Stream) -> None:
        record.started = True
        async with aclosing(record.stream):
            if not self._closing:
                await self._forward(record)

    async def _forward(self, record: _Stream) -> None:
        put = self._buffer.put
        stream_id = record.id
        async for event in record.stream:
            # The runtime only hands out events JSON can carry, so encoding cannot fail.
            frame = encode_event(stream_id, event)
            if event["type"] in TERMINAL_TYPES:
                # Free the id before the terminal event leaves, so the client may reuse it.
                self._forget(record)
            await put(frame, len(frame))
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
        get = self._buffer.get
        send = self._socket.send
        while (frame := await get()) is not None:
            message: WebSocketSendEvent = {"type": "websocket.send", "bytes": None, "text": frame}
            try:
                await send(message)
            except Exception:
                break  # the peer is gone; the reader is about to hear the disconnect
        # Keep draining so no stream waits on a buffer that nobody empties.
        while await get() is not None:
            pass

    async def _stop_streams(self) -> None:
        self._closing = True
        if not self._running:
            return
        stopping = []
        for task, record in self._running.items():
            # A stream whose flow runs on after its client left ends its task by itself
            # when the flow ends; the connection does not wait for that.
            if not record.started or record.stream.disconnect(task):
                stopping.append(task)
        if stopping:
            await asyncio.wait(stopping)

    async def _flush(self) -> None:
        """Let the writer send what is buffered (an error frame explaining the close, say)."""
        writer = self._writer
        assert writer is not None
        self._buffer.close()
        try:
            async with asyncio.timeout(self._limits.close_timeout):
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
