"""Lean stream readers, one per transport, for the load client.

Each reader runs one stream and fills a :class:`Stream` record: when it began
(TCP connect), when its first event arrived, how many events arrived, whether
the terminal event came and the stream ended cleanly. Events are counted in
the raw wire units without decoding them: an SSE event is one ``data:`` line,
a WebSocket event one ``"progress":"`` key (so frames carrying several events
count right), a gRPC event one ``Event`` of a ``StreamResponse``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson

__all__ = [
    "Counter",
    "GrpcTarget",
    "Stream",
    "read_grpc",
    "read_sse",
    "read_ws",
    "request_body",
    "sse_request",
]

_clock = time.perf_counter


class Counter:
    """Events received by every stream, and the gaps between events of recorded streams."""

    __slots__ = ("events", "gaps", "recording")

    def __init__(self) -> None:
        self.events = 0
        self.recording = False
        self.gaps: list[float] = []


class Stream:
    """What one stream saw."""

    __slots__ = (
        "began",
        "counter",
        "ended",
        "error",
        "events",
        "first",
        "first_seen",
        "keep",
        "last",
        "ok",
        "record_gaps",
        "terminal",
    )

    def __init__(self, counter: Counter, *, record_gaps: bool = False) -> None:
        self.counter = counter
        self.record_gaps = record_gaps
        self.began = _clock()
        self.first = 0.0
        self.last = 0.0
        self.ended = 0.0
        self.events = 0
        self.terminal = False
        self.ok = False
        self.error = ""
        self.first_seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # An idle stream's connection, kept open: a callable telling whether it still is.
        self.keep: Callable[[], bool] | None = None

    def got(self, count: int) -> None:
        """``count`` events arrived now."""
        now = _clock()
        if not self.events:
            self.first = now
            if not self.first_seen.done():
                self.first_seen.set_result(None)
        elif self.record_gaps and self.counter.recording:
            gaps = self.counter.gaps
            gaps.append(now - self.last)
            gaps.extend([0.0] * (count - 1))
        self.last = now
        self.events += count
        self.counter.events += count

    def fail(self, error: str) -> None:
        """The stream broke; wake whoever waits for its first event."""
        if not self.error:
            self.error = error
        if not self.first_seen.done():
            self.first_seen.set_result(None)

    @property
    def ttfe(self) -> float | None:
        """Seconds from connect to the first event."""
        return self.first - self.began if self.events else None


def request_body(dialect: str, count: int, mode: str, interval: float) -> dict[str, Any]:
    """The request every server of ``dialect`` (``llmbrick`` or ``upstream``) understands."""
    params = {"count": count, "mode": mode, "interval": interval}
    messages = [{"role": "user", "content": "bench"}]
    if dialect == "upstream":
        # Upstream's model has no metadata field and checks model and sessionId.
        return {
            "model": "gpt-4o",
            "messages": messages,
            "sessionId": "bench",
            "maxTokens": count,
            "toolChoice": {"mode": mode, "interval": interval},
        }
    return {"messages": messages, "metadata": {"bench": params}}


# -- SSE: raw asyncio + httptools ---------------------------------------------------------

_DATA = b"\ndata:"
_DONE = (b'"progress":"DONE"', b'"progress":"ERROR"')


class _SSEProtocol(asyncio.Protocol):
    def __init__(self, stream: Stream, request: bytes, closed: asyncio.Future[None]) -> None:
        self.stream = stream
        self.request = request
        self.closed = closed
        self.parser = httptools.HttpResponseParser(self)
        self.tail = b""
        self.done_tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.stream.fail(f"bad HTTP: {exc}")
            assert self.transport is not None
            self.transport.close()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self.stream.fail(f"HTTP {status}")

    def on_body(self, body: bytes) -> None:
        # Tails of the previous read, so that a marker split between two reads is seen;
        # the counting tail is shorter than its marker, so no marker is counted twice.
        data = self.tail + body
        count = data.count(_DATA)
        stream = self.stream
        if count:
            stream.got(count)
        self.tail = data[-(len(_DATA) - 1) :]
        if not stream.terminal:
            data = self.done_tail + body
            if _DONE[0] in data or _DONE[1] in data:
                stream.terminal = True
                stream.ended = _clock()
            self.done_tail = data[-(len(_DONE[1]) - 1) :]

    def on_message_complete(self) -> None:
        stream = self.stream
        stream.ok = stream.terminal and not stream.error
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        stream = self.stream
        if not stream.ok:
            stream.fail(f"connection lost: {exc}" if exc else "connection closed early")
        if not self.closed.done():
            self.closed.set_result(None)


def sse_request(port: int, body: dict[str, Any]) -> bytes:
    """The HTTP/1.1 request bytes of one SSE stream."""
    payload = orjson.dumps(body)
    head = (
        f"POST /chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        "content-type: application/json\r\naccept: text/event-stream\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_sse(stream: Stream, port: int, request: bytes, idle: bool = False) -> None:
    """Run one SSE stream to its end; ``idle``: to its first event, leaving it open."""
    stream.began = _clock()
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    try:
        transport, _ = await loop.create_connection(
            lambda: _SSEProtocol(stream, request, closed), "127.0.0.1", port
        )
    except OSError as exc:
        stream.fail(f"connect: {exc}")
        return
    if idle:
        await stream.first_seen
        stream.keep = lambda: not closed.done()
        return
    try:
        await closed
    finally:
        transport.abort()


# -- WebSocket: the websockets client -----------------------------------------------------

_PROGRESS = '"progress":"'
_WS_DONE = ('"progress":"DONE"', '"progress":"ERROR"')


async def read_ws(stream: Stream, url: str, start: str, idle: bool = False) -> None:
    """Run one stream over its own WebSocket connection, as a browser tab would."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException
    from websockets.protocol import State

    stream.began = _clock()
    try:
        ws = await connect(
            url, compression=None, ping_interval=None, max_size=None, open_timeout=None
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        stream.fail(f"connect: {type(exc).__name__}: {exc}")
        return
    try:
        await ws.send(start)
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            count = text.count(_PROGRESS)
            if count:
                stream.got(count)
            if _WS_DONE[0] in text or _WS_DONE[1] in text:
                stream.terminal = True
                stream.ended = _clock()
                stream.ok = True
                break
            if idle and stream.events:
                stream.keep = lambda: ws.state is State.OPEN
                return
        else:
            stream.fail(f"closed early ({ws.close_code})")
    except (OSError, WebSocketException) as exc:
        stream.fail(f"{type(exc).__name__}: {exc}")
    await ws.close()


# -- gRPC: grpc.aio ------------------------------------------------------------------------


class GrpcTarget:
    """The channels streams are spread over (``channels`` separate connections)."""

    def __init__(self, port: int, channels: int) -> None:
        import grpc

        from llmbrick_grpc._generated import flow_pb2_grpc

        options = [
            ("grpc.max_receive_message_length", 16 << 20),
            # Each channel its own connection, as separate users would have.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
            for _ in range(max(1, channels))
        ]
        self.stubs = [flow_pb2_grpc.FlowServiceStub(channel) for channel in self.channels]
        self.next = 0

    def stub(self) -> Any:
        """The stub of the next channel, round robin."""
        stub = self.stubs[self.next % len(self.stubs)]
        self.next += 1
        return stub

    async def close(self) -> None:
        """Close every channel."""
        await asyncio.gather(*(channel.close() for channel in self.channels))


async def read_grpc(stream: Stream, stub: Any, request: Any, idle: bool = False) -> None:
    """Run one ``FlowService/Stream`` call to its end; ``idle``: to its first event."""
    import grpc

    stream.began = _clock()
    call = stub.Stream(request)
    try:
        async for response in call:
            events = response.events
            stream.got(len(events))
            kind = events[-1].type
            if kind == "done" or kind == "error":
                stream.terminal = True
                stream.ended = _clock()
            if idle:
                stream.keep = lambda: not call.done()
                return
        stream.ok = stream.terminal
        if not stream.ok:
            stream.fail("ended without a terminal event")
    except grpc.aio.AioRpcError as exc:
        stream.fail(f"{exc.code().name}: {exc.details()}")
    except asyncio.CancelledError:
        call.cancel()
        raise


ReadFn = Callable[..., Any]
