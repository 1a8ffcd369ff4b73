"""Lean stream readers, one per transport, for the load client.

Each reader runs one stream and fills a :class:`Stream` record: when it began
(TCP connect), when its first event arrived, how many events arrived, whether
the terminal event came and the stream ended cleanly. Events are counted in
the raw wire units without decoding them: an SSE event is one ``data:`` line,
a WebSocket event one ``"progress":"`` key (so frames carrying several events
count right), a gRPC event one ``Event`` of a ``StreamResponse``. The OpenAI
route's chunks are decoded, as an SDK would (:func:`read_openai`): a content
delta is an event, and so is the chunk carrying ``finish_reason`` (the flow's
``done``), so a stream counts the same events there as on llmbrick's SSE route.

A server that checks keys gets ``Authorization: Bearer <key>``: every reader and
request builder takes the headers (gRPC: metadata) to send.

A paced stream also records each event's lateness against the flow's schedule
(:class:`Stream`). For the ``abuse`` scenarios there are clients that never read
(:func:`open_slow_sse`, :func:`open_slow_ws`, :func:`open_slow_grpc`) and a
``GET /healthz`` probe (:func:`health_probe`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import httptools
import orjson

__all__ = [
    "Counter",
    "GrpcTarget",
    "Stream",
    "health_probe",
    "open_slow_grpc",
    "open_slow_sse",
    "open_slow_ws",
    "read_grpc",
    "read_openai",
    "read_sse",
    "read_ws",
    "request_body",
    "sse_request",
]

_clock = time.perf_counter


class Counter:
    """Events received by every stream, and the lateness of recorded streams' events."""

    __slots__ = ("events", "lateness", "recording")

    def __init__(self) -> None:
        self.events = 0
        self.recording = False
        self.lateness: list[float] = []


class Stream:
    """What one stream saw.

    With ``interval`` (a paced stream), every event after the first records its
    lateness while the counter is recording: its arrival minus its due time, the
    due time of event k (0-based) being the first event's arrival + k * interval.
    The flow emits event k at its own start + k * interval, so the first event
    anchors the schedule on the client's clock, and an event that came in a batch
    with others counts as late as it really was (a gap between consecutive events
    would record a batch as one long gap and then zeros). The figure can be
    slightly negative when the first event itself was late.
    """

    __slots__ = (
        "began",
        "counter",
        "ended",
        "error",
        "events",
        "first",
        "first_seen",
        "interval",
        "keep",
        "last",
        "ok",
        "terminal",
    )

    def __init__(self, counter: Counter, *, interval: float = 0.0) -> None:
        self.counter = counter
        self.interval = interval
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
        counter = self.counter
        if not self.events:
            self.first = now
            if not self.first_seen.done():
                self.first_seen.set_result(None)
            # The first event anchors the schedule; the rest of its batch are late.
            index, count_late = 1, count - 1
        else:
            index, count_late = self.events, count
        if self.interval and counter.recording and count_late > 0:
            due, step = self.first + index * self.interval, self.interval
            counter.lateness.extend(now - (due + n * step) for n in range(count_late))
        self.last = now
        self.events += count
        counter.events += count

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


def request_body(
    dialect: str,
    count: int,
    mode: str,
    interval: float = 0.0,
    burst: int = 1,
    flow: str | None = None,
) -> dict[str, Any]:
    """The request every server of ``dialect`` (``llmbrick``, ``upstream``, ``openai``) understands.

    ``flow`` names another flow of ``benchmarks/app.py`` (``greedy``, ``big``); only
    our servers have them. The OpenAI route names the flow in ``model`` and hands the
    request's ``metadata`` to the flow as ``ChatRequest.metadata`` (docs/openai.md).
    """
    params = {"count": count, "mode": mode, "interval": interval, "burst": burst}
    messages = [{"role": "user", "content": "bench"}]
    if dialect == "upstream":
        # Upstream's model has no metadata field and checks model and sessionId.
        return {
            "model": "gpt-4o",
            "messages": messages,
            "sessionId": "bench",
            "maxTokens": count,
            "toolChoice": {"mode": mode, "interval": interval, "burst": burst},
        }
    body: dict[str, Any] = {"messages": messages, "metadata": {"bench": params}}
    if dialect == "openai":
        return {"model": flow or "default", "stream": True, **body}
    if flow is not None:
        body["flow"] = flow
    return body


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


class _OpenAIProtocol(_SSEProtocol):
    """The OpenAI route's stream: ``data: {chunk}`` frames, then ``data: [DONE]``.

    Each frame is decoded (JSON), as an SDK would: a content delta counts as an event,
    and so does the chunk with ``finish_reason`` (the flow's ``done`` event), which
    makes the count that of llmbrick's SSE route (every ``text`` event and the terminal
    one). ``[DONE]`` is the clean end; an ``{"error": ...}`` frame fails the stream.
    """

    def __init__(self, stream: Stream, request: bytes, closed: asyncio.Future[None]) -> None:
        super().__init__(stream, request, closed)
        self.pending = b""  # the start of a frame whose end has not arrived

    def on_body(self, body: bytes) -> None:
        frames = (self.pending + body).split(b"\n\n")
        self.pending = frames.pop()
        stream = self.stream
        count = 0
        for frame in frames:
            for line in frame.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # a ": ping" comment
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    stream.terminal = True
                    stream.ended = _clock()
                    continue
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    error = chunk["error"]
                    stream.fail(f"error frame: {error.get('code')}: {error.get('message')}")
                    continue
                for choice in chunk["choices"]:
                    if choice["delta"].get("content") is not None or choice["finish_reason"]:
                        count += 1
        if count:
            stream.got(count)


def _header_lines(headers: Mapping[str, str] | None) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())


def sse_request(
    port: int,
    body: dict[str, Any],
    path: str = "/chat/completions",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The HTTP/1.1 request bytes of one SSE stream (``path``: the OpenAI route's too)."""
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        "content-type: application/json\r\naccept: text/event-stream\r\n"
        f"{_header_lines(headers)}content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_sse(stream: Stream, port: int, request: bytes, idle: bool = False) -> None:
    """Run one SSE stream to its end; ``idle``: to its first event, leaving it open."""
    await _read_http(stream, port, request, idle, _SSEProtocol)


async def read_openai(stream: Stream, port: int, request: bytes, idle: bool = False) -> None:
    """:func:`read_sse` for the OpenAI route's chunks (``sse_request`` to its path)."""
    await _read_http(stream, port, request, idle, _OpenAIProtocol)


async def _read_http(
    stream: Stream, port: int, request: bytes, idle: bool, protocol: type[_SSEProtocol]
) -> None:
    stream.began = _clock()
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    try:
        transport, _ = await loop.create_connection(
            lambda: protocol(stream, request, closed), "127.0.0.1", port
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


async def read_ws(
    stream: Stream,
    url: str,
    start: str,
    idle: bool = False,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Run one stream over its own WebSocket connection, as a browser tab would.

    Cancelled, it drops the connection at once (as a closed tab would), unless the
    stream is an idle one already handed over (``stream.keep``). ``headers`` go with
    the handshake.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException
    from websockets.protocol import State

    stream.began = _clock()
    try:
        ws = await connect(
            url,
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=None,
            additional_headers=dict(headers or {}),
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
    except asyncio.CancelledError:
        ws.transport.abort()
        raise
    await ws.close()


# -- gRPC: grpc.aio ------------------------------------------------------------------------


class GrpcTarget:
    """Channels (separate connections) opened as streams need them.

    ``per``: streams per channel, a new channel every ``per`` streams (0: every
    stream on one channel). ``options``: extra channel arguments.
    """

    def __init__(self, port: int, per: int = 0, options: list[tuple[str, Any]] | None = None):
        self.port = port
        self.per = per
        self.options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 16 << 20),
            # Each channel its own connection, as separate users would have.
            ("grpc.use_local_subchannel_pool", 1),
            *(options or []),
        ]
        self.channels: list[Any] = []
        self.stubs: list[Any] = []
        self.streams = 0

    def stub(self) -> Any:
        """The stub of the channel the next stream goes on."""
        import grpc

        from llmbrick_grpc._generated import flow_pb2_grpc

        index = self.streams // self.per if self.per else 0
        self.streams += 1
        while len(self.stubs) <= index:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=self.options)
            self.channels.append(channel)
            self.stubs.append(flow_pb2_grpc.FlowServiceStub(channel))
        return self.stubs[index]

    async def close(self) -> None:
        """Close every channel."""
        await asyncio.gather(*(channel.close() for channel in self.channels))
        self.channels.clear()
        self.stubs.clear()


async def read_grpc(
    stream: Stream,
    stub: Any,
    request: Any,
    idle: bool = False,
    metadata: Sequence[tuple[str, str]] = (),
) -> None:
    """Run one ``FlowService/Stream`` call to its end; ``idle``: to its first event."""
    import grpc

    stream.began = _clock()
    call = stub.Stream(request, metadata=tuple(metadata) or None)
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


# -- clients that never read (abuse) ---------------------------------------------------------


async def _raw_connect(port: int, rcvbuf: int) -> socket.socket:
    # SO_RCVBUF before connect: it also caps the TCP window the client advertises.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_slow_sse(port: int, request: bytes, rcvbuf: int) -> socket.socket:
    """An SSE request on a socket with a small receive buffer that is never read.

    Close the socket to leave (with unread data the kernel resets the connection).
    """
    sock = await _raw_connect(port, rcvbuf)
    await asyncio.get_running_loop().sock_sendall(sock, request)
    return sock


def _ws_frame(text: str) -> bytes:
    """One masked text frame, as a client must send it (RFC 6455, 5.2)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    mask = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return head + key + masked


async def open_slow_ws(port: int, starts: list[str], rcvbuf: int) -> socket.socket:
    """A WebSocket connection (handshake by hand) that sends ``starts`` and never reads again.

    Raises:
        ConnectionError: the server did not switch protocols.
    """
    loop = asyncio.get_running_loop()
    sock = await _raw_connect(port, rcvbuf)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET /ws HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\n"
            "sec-websocket-version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, handshake.encode())
        answer = b""
        # The server sends nothing after its answer until a stream starts: read it whole.
        while b"\r\n\r\n" not in answer:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
        await loop.sock_sendall(sock, b"".join(_ws_frame(start) for start in starts))
    except BaseException:
        sock.close()
        raise
    return sock


def open_slow_grpc(port: int, request: Any) -> tuple[Any, Any]:
    """A ``Stream`` call on its own channel that is never read: ``(channel, call)``.

    gRPC's client reads its socket by itself, so a small receive buffer changes
    nothing; what stops the server is HTTP/2 flow control: the call's window
    (64 KiB, never grown since BDP probing is off) fills and is not reopened until
    the application reads. ``call.cancel()`` and ``channel.close()`` leave.
    """
    target = GrpcTarget(port, options=[("grpc.http2.bdp_probe", 0)])
    stub = target.stub()
    return target.channels[0], stub.Stream(request)


async def health_probe(port: int, limit_s: float) -> tuple[float, int]:
    """``GET /healthz`` on a new connection: ``(seconds until the whole answer, status)``.

    The status is 0 when no answer came within ``limit_s`` or the connection broke.
    """
    began = _clock()
    writer = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                "connection: close\r\n\r\n".encode()
            )
            answer = await reader.read()  # the server closes after its answer
        status_line = answer.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) > 1 else 0
    except (OSError, TimeoutError, ValueError):
        status = 0
    finally:
        if writer is not None:
            writer.transport.abort()
    return _clock() - began, status
