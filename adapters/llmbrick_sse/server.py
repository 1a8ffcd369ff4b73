"""The SSE server: ``POST /chat/completions`` streaming a flow's events, on Litestar."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Generator
from contextlib import aclosing
from typing import Any, TypeVar

import orjson
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.types import Message, Receive, Scope, Send

from llmbrick import (
    ErrorCode,
    ErrorInfo,
    FlowRuntime,
    FlowStream,
    LLMBrickError,
    Overloaded,
    as_runtime,
)

from .codec import (
    PING,
    accepts_event_stream,
    accepts_json,
    encode_event,
    error_body,
    is_json_content_type,
    status_for,
)

__all__ = ["SSEServer", "create_meta_router", "create_router", "http_error_handler"]

F = TypeVar("F", bound=Callable[..., Any])

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Frames kept ready per stream while the client is slow; the flow waits beyond this.
_READ_AHEAD = 256
_STREAM_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_PING_MESSAGE: Message = {"type": "http.response.body", "body": PING, "more_body": True}


class _Rejected(Exception):
    """Ends a request before any stream starts, with an HTTP status and an error body."""

    def __init__(
        self,
        status: int,
        error: ErrorInfo,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(error["message"])
        self.status = status
        self.body = error_body(error)
        self.headers = headers


def _rejected(status: int, message: str, *headers: tuple[bytes, bytes]) -> _Rejected:
    return _Rejected(status, {"code": ErrorCode.INVALID_ARGUMENT, "message": message}, headers)


class _Watch:
    """Listens for the client going away (cancelling the stream) and sends keepalive pings.

    The pings run on a timer rather than in the listening task, so an idle stream
    holds one small task and one timer handle.
    """

    __slots__ = (
        "_loop",
        "_ping",
        "_pinging",
        "_seen",
        "_send",
        "_task",
        "_timer",
        "disconnected",
        "finished",
        "sent",
    )

    def __init__(self, receive: Receive, send: Send, owner: asyncio.Task[Any], ping: float) -> None:
        self.sent = 0
        self.disconnected = False
        self.finished = False
        self._send = send
        self._ping = ping
        self._seen = -1
        self._pinging: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._listen(receive, owner))
        self._timer = self._loop.call_later(ping, self._tick) if ping > 0 else None

    async def _listen(self, receive: Receive, owner: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.disconnected = True
                    owner.cancel()
                return

    def _tick(self) -> None:
        # Ping only after a whole interval with nothing sent, and never two at once.
        if self.finished:
            return
        if self.sent == self._seen and (self._pinging is None or self._pinging.done()):
            self._pinging = self._loop.create_task(self._send_ping())
        self._seen = self.sent
        self._timer = self._loop.call_later(self._ping, self._tick)

    async def _send_ping(self) -> None:
        try:
            await self._send(_PING_MESSAGE)
        except OSError:
            pass  # the client is gone; the listener ends the stream

    def stop(self) -> None:
        self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._pinging is not None:
            self._pinging.cancel()


class _Rest:
    """Awaits the rest of an awaitable whose first step already ran (and had to wait)."""

    __slots__ = ("_signal", "_steps")

    def __init__(self, steps: Generator[Any, Any, Any], signal: Any) -> None:
        self._steps = steps
        self._signal = signal

    def __await__(self) -> Generator[Any, Any, Any]:
        steps, signal = self._steps, self._signal
        while True:
            try:
                value = yield signal
            except BaseException as exc:  # a cancellation goes to the step in flight
                try:
                    signal = steps.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    signal = steps.send(value)
                except StopIteration as done:
                    return done.value


class _ReadAhead:
    """Runs a stream in its own task, keeping up to ``limit`` encoded frames ready to send."""

    def __init__(self, stream: FlowStream, limit: int) -> None:
        self._frames: list[bytes] = []
        self._finished = False
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.task = asyncio.create_task(self._run(stream, limit))

    async def _run(self, stream: FlowStream, limit: int) -> None:
        try:
            async for event in stream:
                self._frames.append(encode_event(event))
                self._ready.set()
                if len(self._frames) >= limit:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._finished = True
            self._ready.set()

    async def take(self) -> bytes | None:
        """Every frame waiting, joined (waits for at least one); ``None`` at the end."""
        while not self._frames:
            if self._finished:
                self.task.result()  # re-raises what stopped the reader, if anything did
                return None
            self._ready.clear()
            await self._ready.wait()
        chunk = b"".join(self._frames)
        self._frames.clear()
        self._room.set()
        return chunk


async def _send_read_ahead(stream: FlowStream, send: Send, watch: _Watch) -> None:
    reader = _ReadAhead(stream, _READ_AHEAD)
    try:
        while (chunk := await reader.take()) is not None:
            watch.sent += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        if not reader.task.done():
            reader.task.cancel()
            await asyncio.wait([reader.task])


class _ChatEndpoint:
    """Validates a chat request and streams the flow's events as SSE frames."""

    def __init__(self, runtime: FlowRuntime, max_body_size: int, ping_interval: float) -> None:
        self.runtime = runtime
        self.max_body_size = max_body_size
        self.ping_interval = ping_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            stream, streaming = await self._open(scope, receive)
        except _Rejected as exc:
            await _send_json(send, exc.status, exc.body, exc.headers)
            return
        if stream is None:
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, send, task, self.ping_interval if streaming else 0)
        try:
            if streaming:
                await self._stream(stream, send, watch)
            else:
                result = await stream.collect()
                error = result["error"]
                status = 200 if error is None else status_for(error["code"])
                watch.finished = True
                await _send_json(send, status, orjson.dumps(result))
        except asyncio.CancelledError:
            # Our own cancel on disconnect ends the request quietly; any other propagates.
            if watch.disconnected and task.uncancel() == 0:
                return
            raise
        finally:
            watch.stop()
            await stream.aclose()

    async def _stream(self, stream: FlowStream, send: Send, watch: _Watch) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        async with aclosing(stream):
            async for event in stream:
                watch.sent += 1
                steps = send(
                    {"type": "http.response.body", "body": encode_event(event), "more_body": True}
                ).__await__()
                try:
                    signal = next(steps)
                except StopIteration:
                    continue  # written at once: the client keeps up
                # The send has to wait for the client to drain its socket buffer: the
                # client reads slower than the flow produces. Finish this send, then read
                # ahead in a second task and send whatever piled up in one write.
                await _Rest(steps, signal)
                await _send_read_ahead(stream, send, watch)
                break
        watch.finished = True
        await send(_STREAM_END)

    async def _open(self, scope: Scope, receive: Receive) -> tuple[FlowStream | None, bool]:
        method = scope.get("method")
        if method != "POST":
            error: ErrorInfo = {
                "code": ErrorCode.UNIMPLEMENTED,
                "message": f"method {method} is not allowed here; use POST",
            }
            raise _Rejected(405, error, ((b"allow", b"POST"),))
        headers = _headers(scope)
        content_type = headers.get("content-type")
        if not is_json_content_type(content_type):
            raise _rejected(
                415, f"content type {content_type!r} is not supported; send application/json"
            )
        body = await self._read_body(receive, headers.get("content-length"))
        if body is None:
            return None, False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _rejected(400, f"malformed JSON body: {exc}") from None
        if not isinstance(payload, dict):
            raise _rejected(422, f"the body must be a JSON object, got {type(payload).__name__}")
        streaming = payload.get("stream", True) is not False
        accept = headers.get("accept")
        if streaming and not accepts_event_stream(accept):
            raise _rejected(
                406,
                f"Accept {accept!r} excludes text/event-stream; "
                'accept it, or send "stream": false for one JSON document',
            )
        if not streaming and not accepts_json(accept):
            raise _rejected(406, f"Accept {accept!r} excludes application/json")
        try:
            return self.runtime.start(None, payload, transport="sse"), streaming
        except LLMBrickError as exc:
            extra: tuple[tuple[bytes, bytes], ...] = ()
            if isinstance(exc, Overloaded):
                extra = ((b"retry-after", str(math.ceil(exc.retry_after)).encode()),)
            raise _Rejected(status_for(exc.code), exc.to_info(), extra) from None

    async def _read_body(self, receive: Receive, declared: str | None) -> bytes | None:
        limit = self.max_body_size
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _too_large(limit: int) -> _Rejected:
    return _rejected(413, f"the body is larger than the {limit}-byte limit")


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}


async def _send_json(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/chat/completions",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
) -> Router:
    """The SSE chat endpoint for ``runtime``, to mount on any Litestar app.

    Args:
        runtime: the runtime shared with every other adapter.
        prefix: mounted under this path (e.g. ``"/api"``).
        path: the chat endpoint's path.
        max_body_size: bytes a request body may have (413 beyond).
        ping_interval: seconds of silence before a ``: ping`` comment (0 disables).
    """
    endpoint = _ChatEndpoint(runtime, max_body_size, ping_interval)

    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    return Router(
        path=prefix or "/",
        route_handlers=[asgi(path, copy_scope=False, name="llmbrick-chat")(chat_completions)],
    )


def create_meta_router(runtime: FlowRuntime, *, prefix: str = "") -> Router:
    """``GET /flows`` (names, descriptions, request schemas) and ``GET /healthz``.

    Health answers 503 while the runtime drains, so load balancers stop sending work.
    """

    async def list_flows() -> dict[str, Any]:
        return {"flows": runtime.registry.describe()}

    async def healthz() -> Response[dict[str, Any]]:
        if runtime.draining:
            return Response({"status": "draining"}, status_code=503)
        return Response({"status": "ok", "streams": runtime.active_streams}, status_code=200)

    return Router(
        path=prefix or "/",
        route_handlers=[
            get("/flows", name="llmbrick-flows")(list_flows),
            get("/healthz", name="llmbrick-health", cache=False)(healthz),
        ],
    )


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (404, 405, ...) in llmbrick's ``{"error": {...}}`` shape."""
    return _http_error(request, exc)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    code = {400: ErrorCode.INVALID_ARGUMENT, 404: ErrorCode.NOT_FOUND}.get(
        exc.status_code, ErrorCode.UNIMPLEMENTED if exc.status_code == 405 else ErrorCode.INTERNAL
    )
    message = exc.detail if exc.status_code < 500 else "internal error"
    return Response(
        error_body({"code": code, "message": message}),
        status_code=exc.status_code,
        media_type=MediaType.JSON,
        headers=exc.headers,
    )


class SSEServer:
    """Serve flows over SSE.

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime
            (see :func:`llmbrick.as_runtime`); a pipeline becomes the flow ``default``.
        prefix, path, max_body_size, ping_interval: as :func:`create_router`.
    """

    def __init__(
        self,
        target: object = None,
        *,
        prefix: str = "",
        path: str = "/chat/completions",
        max_body_size: int = 1 << 20,
        ping_interval: float = 15.0,
    ) -> None:
        self.runtime = as_runtime(target)
        self.router = create_router(
            self.runtime,
            prefix=prefix,
            path=path,
            max_body_size=max_body_size,
            ping_interval=ping_interval,
        )
        self.app = Litestar(
            route_handlers=[self.router, create_meta_router(self.runtime, prefix=prefix)],
            openapi_config=None,
            logging_config=None,
            exception_handlers={HTTPException: http_error_handler},
            on_shutdown=[self.runtime.aclose],
        )

    def flow(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Register a flow on this server's registry (see ``FlowRegistry.flow``)."""
        return self.runtime.registry.flow(name, **options)

    def run(self, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
        """Serve until interrupted, with uvloop and httptools when they are installed."""
        import uvicorn

        options: dict[str, Any] = {"log_level": "info", "loop": "auto", "http": "auto"}
        options.update(uvicorn_options)
        uvicorn.run(self.app, host=host, port=port, **options)
