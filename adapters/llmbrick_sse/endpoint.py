"""The shared HTTP streaming endpoint: one request pipeline, several wire formats.

``StreamEndpoint`` does what every HTTP streaming route needs: it checks the
method, credentials, content type and body size, builds the request context,
starts the flow, streams frames with keepalive pings, watches for the client
going away, and keeps a slow client's backlog bounded in bytes. What the
frames and error bodies look like is the business of an :class:`HttpCodec`:
llmbrick's own SSE (``/chat/completions``), the OpenAI API, the AI SDK's UI
message stream.
"""

from __future__ import annotations

import asyncio
import math
import time
import types
from collections.abc import Callable, Generator
from typing import Any, cast
from urllib.parse import parse_qs

import orjson
from litestar.types import Message, Receive, Scope, Send

from llmbrick import ErrorCode, ErrorInfo, FlowRuntime, LLMBrickError, RequestContext
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES, Pump
from llmbrick.stream import FlowStream, ResumedStream
from llmbrick_http import RAW_SEND_KEY, HttpSettings, context_from_scope

from .codec import is_json_content_type
from .watch import Pinger, Watch
from .wire import MAX_ECHO, HttpCodec, Opening, Rejected

__all__ = ["KeptStreamEndpoint", "StreamEndpoint", "parse_last_event_id"]

_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


@types.coroutine
def _rest(steps: Generator[Any, Any, Any], signal: Any) -> Generator[Any, Any, Any]:
    """Await the rest of an awaitable whose first step already ran (and had to wait).

    asyncio resumes a waiting task with ``send(None)`` (the result is read from the
    future), so after handing the loop the pending ``signal`` the rest is delegated
    natively with ``yield from``. A cancellation thrown at that first point goes to
    the awaitable in flight.
    """
    try:
        yield signal
    except BaseException as exc:
        try:
            signal = steps.throw(exc)
        except StopIteration as done:
            return done.value
        return (yield from _rest(steps, signal))
    return (yield from steps)


class StreamEndpoint:
    """An ASGI endpoint starting one flow per POST and answering in ``codec``'s format.

    Args:
        runtime: the runtime shared with every other adapter.
        codec: the wire format.
        max_body_size: bytes a request body may have (413 and close beyond).
        ping_interval: seconds of silence before a keepalive frame (0 disables).
        max_buffer_bytes: encoded bytes kept ready per stream while the client
            reads slower than the flow produces; the flow waits beyond.
        settings: the HTTP limits (the body read timeout).
        streams_path: where kept streams are served (``/streams``, say): a kept
            stream's response names its URL in ``Location``, and a request with a
            ``Last-Event-ID`` naming a kept stream resumes it instead of starting one.
    """

    def __init__(
        self,
        runtime: FlowRuntime,
        codec: HttpCodec,
        *,
        max_body_size: int = 1 << 20,
        ping_interval: float = 15.0,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        settings: HttpSettings | None = None,
        streams_path: str | None = None,
    ) -> None:
        if max_body_size < 1 or max_buffer_bytes < 1 or ping_interval < 0:
            raise ValueError("max_body_size and max_buffer_bytes must be positive, ping >= 0")
        self.runtime = runtime
        self.codec = codec
        self.max_body_size = max_body_size
        self.ping_interval = ping_interval
        self.pinger = Pinger(ping_interval) if ping_interval > 0 else None
        self.max_buffer_bytes = max_buffer_bytes
        self.settings = settings or HttpSettings()
        self.streams_path = streams_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        codec = self.codec
        context = context_from_scope(scope, codec.transport)
        try:
            stream, opening = await self._open(scope, receive, context)
        except Rejected as exc:
            await self._refuse(send, exc.status, exc.error, exc.headers)
            return
        if stream is None or opening is None:
            return  # the client left while sending its body
        if opening.detached and isinstance(stream, FlowStream):
            await self._detach(stream, send)
            return
        task = asyncio.current_task()
        assert task is not None
        pinger = self.pinger if opening.streaming else None
        body_send: Send = _raw_send(scope, send)
        watch = Watch(scope, receive, body_send, stream, task, codec.ping, pinger)
        try:
            if opening.streaming:
                await self._stream(stream, opening, send, watch, body_send)
            else:
                result = await stream.collect()
                error = result["error"]
                status = 200 if error is None else codec.status_for(error)
                watch.finished = True
                # A resumed stream has what a codec reads of a FlowStream: its id and flow.
                body = codec.document(result, stream, opening)  # type: ignore[arg-type]
                await _send_json(send, status, body)
        except asyncio.CancelledError:
            # Our own cancel on disconnect ends the request quietly; any other propagates.
            if watch.disconnected and task.uncancel() == 0:
                return
            raise
        finally:
            watch.stop()
            await stream.aclose()

    def location(self, stream: FlowStream | ResumedStream) -> bytes | None:
        """Where a kept stream can be read again (with its token), if anywhere."""
        log = stream.log if isinstance(stream, FlowStream) else None
        record = log.record if log is not None else getattr(stream, "record", None)
        if self.streams_path is None or record is None:
            return None
        return f"{self.streams_path}/{record.id}?token={record.token}".encode()

    async def _detach(self, stream: FlowStream, send: Send) -> None:
        location = self.location(stream)
        if location is None or stream.policy == "cancel":
            await stream.aclose()
            why = (
                "this server keeps no streams (start it with a store)"
                if location is None
                else f"flow {stream.flow!r} is cancelled when its client leaves, "
                "so it cannot run detached"
            )
            error: ErrorInfo = {"code": ErrorCode.FAILED_PRECONDITION.value, "message": why}
            await self._refuse(send, 400, error)
            return
        body = orjson.dumps(
            {"streamId": stream.id, "location": location.decode(), "policy": stream.policy}
        )
        headers = ((b"location", location), (b"x-llmbrick-stream-id", stream.id.encode()))
        await stream.aclose()  # no reader now: the flow runs on under its policy
        await _send_json(send, 201, body, headers)

    async def _refuse(
        self,
        send: Send,
        status: int,
        error: ErrorInfo,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        await _send_json(send, status, self.codec.error_body(error, status), headers)

    async def _open(
        self, scope: Scope, receive: Receive, context: RequestContext
    ) -> tuple[FlowStream | ResumedStream | None, Opening | None]:
        method = scope.get("method")
        if method != "POST":
            raise Rejected.invalid(
                405, f"method {str(method)[:16]} is not allowed here; use POST", (b"allow", b"POST")
            )
        runtime = self.runtime
        codec = self.codec
        try:
            await runtime.authenticate(context)
        except LLMBrickError as exc:
            raise self._rejection(exc.to_info()) from None
        headers = context.headers
        content_type = headers.get("content-type")
        if content_type is None and "origin" in headers:
            # A browser sends a body without a preflight only with a "simple" content type;
            # refusing those keeps other sites' pages from starting flows.
            raise Rejected.invalid(415, "a request from a browser must be sent as application/json")
        if not is_json_content_type(content_type):
            shown = (content_type or "")[:MAX_ECHO]
            raise Rejected.invalid(
                415, f"content type {shown!r} is not supported; send application/json"
            )
        body = await self._read_body(receive, headers.get("content-length"))
        if body is None:
            return None, None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected.invalid(
                400, f"malformed JSON body (line {exc.lineno}, column {exc.colno})"
            ) from None
        try:
            opening = codec.open(payload, headers, runtime)
            context.tag = opening.tag
            last = headers.get("last-event-id")
            if last is not None and self.streams_path is not None and ":" in last:
                # A client re-sending its request after a drop: resume, do not start again.
                stream_id, after = parse_last_event_id(last)
                resumed = await runtime.resume(stream_id, after, context=context)
                return resumed, opening
            stream = runtime.start(opening.flow, opening.payload, context=context)
            # The flow has its validated request; the raw JSON would otherwise stay
            # alive as long as the stream (about 1 KB on every idle stream).
            opening.payload = None
        except LLMBrickError as exc:
            raise self._rejection(exc.to_info()) from None
        return stream, opening

    def _rejection(self, error: ErrorInfo) -> Rejected:
        return _rejection(self.codec, error)

    async def _read_body(self, receive: Receive, declared: str | None) -> bytes | None:
        limit = self.max_body_size
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        timeout = self.settings.body_timeout
        while True:
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                raise Rejected.invalid(
                    408,
                    f"the request body paused for more than {timeout:g} s",
                    (b"connection", b"close"),
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _start(self, stream: FlowStream | ResumedStream, send: Send) -> None:
        # Apart from _stream, so that its headers are not held while the stream runs.
        headers = [
            *self.codec.stream_headers,
            (b"x-llmbrick-stream-id", stream.id.encode()),
        ]
        location = self.location(stream)
        if location is not None:
            headers.append((b"location", location))
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _stream(
        self,
        stream: FlowStream | ResumedStream,
        opening: Opening,
        send: Send,
        watch: Watch,
        body_send: Send | None = None,
    ) -> None:
        """Stream the events: the response start through ``send``, so every middleware
        sees it, and the body through ``body_send`` (the server's own, when the app
        hands it over: see ``llmbrick_http.LlmbrickApp``)."""
        await self._start(stream, send)
        send = body_send or send
        writer = self.codec.writer(stream, opening)  # type: ignore[arg-type]
        encode = writer.encode
        next_event = stream.__aiter__().__anext__
        # Frames of events the flow made without waiting: they go out in one write when
        # the flow has to wait (or when there are many), not in one write each. Telling
        # costs a little per event (the flow's step is run by hand), so a flow that waits
        # before every event is awaited plainly, and only probed now and then for bursts.
        ready: list[bytes] = []
        size = 0
        limit = self.max_buffer_bytes
        stepping = True
        waits = 0  # steps in a row that had to wait
        probe = 0  # plain awaits left before the next probe
        # A write that has to wait for the client: it is finished before the next one.
        waiting: tuple[Any, Any] | None = None
        ended = False
        try:
            while waiting is None:
                if not stepping and probe:
                    if ready:
                        # What the last probe got goes out before the flow is awaited
                        # again: the flow may wait long before its next event.
                        waiting = _begin_write(send, ready, watch)
                        ready, size = [], 0
                        continue
                    probe -= 1
                    try:
                        event = await next_event()
                    except StopAsyncIteration:
                        ended = True
                        break
                    frame = encode(event)
                    if frame:
                        waiting = _begin_write(send, [frame], watch)
                    continue
                steps = next_event().__await__()
                try:
                    signal = steps.send(None)
                except StopIteration as produced:
                    event = produced.value
                    stepping, waits = True, 0
                except StopAsyncIteration:
                    ended = True
                    break
                else:
                    # The flow has to wait: send what it made meanwhile (a write that
                    # completes at once, or one finished after this step of the flow).
                    if ready:
                        waiting = _begin_write(send, ready, watch)
                        ready, size = [], 0
                    waits += 1
                    if waits >= _PLAIN_AFTER:
                        stepping, probe = False, _PROBE_EVERY
                    try:
                        event = await _rest(steps, signal)
                    except StopAsyncIteration:
                        ended = True
                        break
                frame = encode(event)
                if frame:
                    ready.append(frame)
                    size += len(frame)
                    if (len(ready) >= _MAX_BATCH or size >= limit) and waiting is None:
                        waiting = _begin_write(send, ready, watch)
                        ready, size = [], 0
            if waiting is not None:
                write, waiting = waiting, None
                await _rest(*write)
                if not ended:
                    # The client reads slower than the flow produces: let the flow run
                    # ahead in its own task into a bounded buffer, and send whatever piled
                    # up in one write.
                    await self._send_backlog(stream, encode, send, watch, ready)
                    ready = []
        finally:
            if waiting is not None:
                waiting[0].close()  # the client is gone: unwind the write it left
        if ready:
            await _write(send, ready, watch)
        trailer = writer.close()
        watch.finished = True
        if trailer:
            await send({"type": "http.response.body", "body": trailer, "more_body": False})
        else:
            await send(_END)

    async def _send_backlog(
        self,
        stream: FlowStream | ResumedStream,
        encode: Any,
        send: Send,
        watch: Watch,
        first: list[bytes],
    ) -> None:
        def framed(event: object) -> tuple[bytes, int]:
            frame: bytes = encode(event)
            return frame, len(frame)

        pump: Pump[bytes] = Pump(stream, framed, self.max_buffer_bytes)
        try:
            if first:
                await _write(send, first, watch)
            while frames := await pump.take():
                watch.last_write = time.monotonic()
                await send(
                    {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
                )
        finally:
            await pump.aclose()


#: Frames one write carries at most while the flow keeps producing without waiting.
_MAX_BATCH = 64
#: Steps in a row that wait before the flow is awaited plainly, and plain awaits
#: between two probes for a burst.
_PLAIN_AFTER = 4
_PROBE_EVERY = 8


def _begin_write(send: Send, frames: list[bytes], watch: Watch) -> tuple[Any, Any] | None:
    """Start sending ``frames`` in one write: ``None`` if it is done, else its rest to await.

    A write is an ASGI send; the server writes at once unless the client's socket
    buffer is full, and then the send waits. Stepping it tells which.
    """
    watch.last_write = time.monotonic()
    body = frames[0] if len(frames) == 1 else b"".join(frames)
    steps = send({"type": "http.response.body", "body": body, "more_body": True}).__await__()
    try:
        signal = next(steps)
    except StopIteration:
        return None  # written at once: the client keeps up
    return steps, signal


async def _write(send: Send, frames: list[bytes], watch: Watch) -> bool:
    """Send ``frames`` in one write; True if the write had to wait for the client."""
    rest = _begin_write(send, frames, watch)
    if rest is None:
        return False
    await _rest(*rest)
    return True


def _raw_send(scope: Scope, send: Send) -> Send:
    raw: Send = cast(dict[str, Any], scope).get(RAW_SEND_KEY, send)
    return raw


def _rejection(codec: HttpCodec, error: ErrorInfo) -> Rejected:
    status = codec.status_for(error)
    extra: list[tuple[bytes, bytes]] = []
    details = error.get("details")
    if isinstance(details, dict) and isinstance(details.get("retryAfter"), int | float):
        extra.append((b"retry-after", str(max(1, math.ceil(details["retryAfter"]))).encode()))
    if error["code"] == ErrorCode.UNAUTHENTICATED:
        extra.append((b"www-authenticate", b'Bearer realm="llmbrick"'))
    return Rejected(status, error, tuple(extra))


def parse_last_event_id(value: str, stream_id: str | None = None) -> tuple[str, int]:
    """``(stream id, event number)`` from a ``Last-Event-ID`` of ``<stream id>:<n>`` or ``<n>``.

    Args:
        value: the header (or query parameter) value.
        stream_id: the stream the request names already, if any: a bare number
            refers to it, and a composite id must agree with it.

    Raises:
        Rejected: 400 when the value is malformed or names another stream.
    """
    text = value.strip()
    named, sep, number = text.rpartition(":")
    if not sep:
        named, number = stream_id or "", text
    if not number.isdigit() or not named or len(number) > 18:
        raise Rejected.invalid(
            400,
            f"Last-Event-ID {text[:MAX_ECHO]!r} is not an event id: "
            "send the last `id:` you received (<stream id>:<number>)",
        )
    if stream_id is not None and named != stream_id:
        raise Rejected.invalid(400, "Last-Event-ID names another stream than the URL")
    return named, int(number)


class KeptStreamEndpoint:
    """``GET`` reads a kept stream again (replay, then live), ``DELETE`` cancels it.

    The stream id is the last path segment. The caller is the principal that
    started the stream, or presents its ``token`` query parameter (what a
    ``Location`` header carries, so a browser's ``EventSource`` needs no key).
    ``GET`` resumes after the ``Last-Event-ID`` header, or the ``lastEventId``
    query parameter, or from the start.

    With ``tag_of``, the route names a tag instead of a stream id (the AI SDK's
    ``GET {api}/{chatId}/stream``): ``GET`` replays the newest kept stream
    started with that tag that the caller may read, from the start, and answers
    ``204`` when there is none.

    Args:
        runtime: the runtime shared with every other adapter.
        codec: the wire format of the replayed events (llmbrick's SSE).
        ping_interval, max_buffer_bytes: as :class:`StreamEndpoint`.
        streams_path: the route's own path, for the ``Location`` of what it serves.
        tag_of: the tag a request's scope names (``None``: one no stream can have).
    """

    def __init__(
        self,
        runtime: FlowRuntime,
        codec: HttpCodec,
        *,
        ping_interval: float = 15.0,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        streams_path: str = "/streams",
        tag_of: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.codec = codec
        self.tag_of = tag_of
        self._sender = StreamEndpoint(
            runtime,
            codec,
            ping_interval=ping_interval,
            max_buffer_bytes=max_buffer_bytes,
            streams_path=streams_path,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = context_from_scope(scope, self.codec.transport)
        method = scope.get("method")
        stream_id = str(scope.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = _first(query, "token")
        try:
            if self.tag_of is not None:
                if method != "GET":
                    raise Rejected.invalid(
                        405,
                        f"method {str(method)[:16]} is not allowed here; use GET",
                        (b"allow", b"GET"),
                    )
                await self.runtime.authenticate(context)
                tag = self.tag_of(scope)
                found = await self.runtime.find(tag, context=context) if tag else None
                if found is None:
                    await send({"type": "http.response.start", "status": 204, "headers": []})
                    await send(_END)
                    return
                stream_id = found
            if method == "DELETE":
                await self.runtime.cancel(stream_id, context=context, token=token)
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send(_END)
                return
            if method != "GET":
                raise Rejected.invalid(
                    405,
                    f"method {str(method)[:16]} is not allowed here; use GET or DELETE",
                    (b"allow", b"GET, DELETE"),
                )
            last = context.headers.get("last-event-id") or _first(query, "lastEventId")
            after = parse_last_event_id(last, stream_id)[1] if last else 0
            resumed = await self.runtime.resume(stream_id, after, context=context, token=token)
        except LLMBrickError as exc:
            rejected = _rejection(self.codec, exc.to_info())
            await self._sender._refuse(send, rejected.status, rejected.error, rejected.headers)
            return
        except Rejected as exc:
            await self._sender._refuse(send, exc.status, exc.error, exc.headers)
            return
        task = asyncio.current_task()
        assert task is not None
        body_send: Send = _raw_send(scope, send)
        pinger = self._sender.pinger
        watch = Watch(scope, receive, body_send, resumed, task, self.codec.ping, pinger)
        opening = Opening(resumed.flow, None, True)
        try:
            await self._sender._stream(resumed, opening, send, watch, body_send)
        except asyncio.CancelledError:
            if watch.disconnected and task.uncancel() == 0:
                return
            raise
        finally:
            watch.stop()
            await resumed.aclose()


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _too_large(limit: int) -> Rejected:
    # Close the connection: the rest of the body is not worth reading.
    return Rejected.invalid(
        413, f"the body is larger than the {limit}-byte limit", (b"connection", b"close")
    )


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
