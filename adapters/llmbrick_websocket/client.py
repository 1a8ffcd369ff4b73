"""A Python client for the llmbrick WebSocket protocol, on the ``websockets`` library.

One connection carries many streams: a single reader task receives every
frame and hands each event to the queue of its stream, so streams may be
consumed concurrently from different tasks::

    async with connect("ws://127.0.0.1:8000/ws") as ws:
        async for event in ws.stream("default", {"messages": [...]}):
            ...
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from llmbrick import TERMINAL_TYPES, ErrorCode, ErrorInfo, Event, LLMBrickError, Unavailable
from llmbrick.client import (
    FlowClient,
    FlowRequest,
    build_payload,
    error_in_body,
    exception_for,
    tls_context,
)

from .codec import (
    MAX_ID_LENGTH,
    ServerFrame,
    code_for_close,
    encode_cancel,
    encode_cancel_kept,
    encode_list_flows,
    encode_resume,
    encode_start,
    parse_server_frame,
)

__all__ = ["ClientStream", "WebSocketClient", "connect"]

_log = logging.getLogger("llmbrick.websocket.client")


class _Refused(Exception):
    """The server refused the handshake with llmbrick's error body: its answer to every stream."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error["message"])
        self.error = error


class ClientStream:
    """One stream on a :class:`WebSocketClient`; an async iterator of its events.

    Iteration sends the ``start`` frame if :meth:`start` was not awaited, yields
    each event (the terminal ``done`` or ``error`` event last) and then stops.
    Errors follow :class:`WebSocketClient`'s policy: ``Unavailable`` is raised
    only when no server could be reached or the connection was lost before the
    first event; anything else is the terminal ``error`` event. Leave early
    with :meth:`aclose` (or ``async with``), which cancels the stream on the server.
    """

    __slots__ = (
        "_client",
        "_events",
        "_finished",
        "_last",
        "_opening",
        "_socket",
        "_started",
        "id",
        "stream_id",
    )

    def __init__(
        self, client: WebSocketClient, stream_id: str, opening: Callable[[str], str]
    ) -> None:
        self.id = stream_id
        #: The server's id of the stream (to resume it), once the server confirmed the start.
        self.stream_id: str | None = None
        self._client = client
        # The frame that opens the stream (a start or a resume), given the wire id.
        self._opening = opening
        self._events: asyncio.Queue[Event | LLMBrickError] = asyncio.Queue()
        self._socket: _Socket | None = None
        self._last: Event | None = None
        self._started = False
        self._finished = False

    async def start(self) -> None:
        """Send the ``start`` frame now (iteration does it otherwise).

        Raises:
            Unavailable: no server could be reached.
        """
        if self._started:
            return
        self._started = True
        try:
            self._socket = await self._client._send_start(self)
        except _Refused as refused:
            self._events.put_nowait(FlowClient.error_event(refused.error))
        except BaseException:
            self._finished = True  # never registered: nothing will ever arrive
            raise

    async def cancel(self) -> None:
        """Ask the server to cancel; the stream still ends with its terminal ``CANCELLED`` event."""
        socket = self._socket
        if socket is not None and not self._finished and socket.streams.get(self.id) is self:
            await socket.send_quietly(encode_cancel(self.id))

    def __aiter__(self) -> ClientStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        if not self._started:
            await self.start()
        item = await self._events.get()
        if isinstance(item, LLMBrickError):
            self._finished = True
            return self._client._ending(item, self._last)
        if item["type"] in TERMINAL_TYPES:
            self._finished = True
        self._last = item
        return item

    async def aclose(self) -> None:
        """Stop listening; a stream still running on the server is cancelled there."""
        if self._finished:
            return
        self._finished = True
        socket = self._socket
        if socket is not None and socket.forget(self):
            await socket.send_quietly(encode_cancel(self.id))

    async def __aenter__(self) -> ClientStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Socket:
    """One open connection and its reader, which routes each frame to whoever awaits it."""

    def __init__(self, connection: ClientConnection, problems: list[ErrorInfo]) -> None:
        self.connection = connection
        self.streams: dict[str, ClientStream] = {}
        # The server answers ``flows`` frames in the order they were sent.
        self.flows: deque[asyncio.Future[list[dict[str, Any]]]] = deque()
        self.problems = problems
        self.reader = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        return self.reader.done()

    async def send(self, frame: str) -> None:
        """Send a frame, or raise ``Unavailable`` if the connection is gone."""
        try:
            await self.connection.send(frame)
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def send_quietly(self, frame: str) -> None:
        try:
            await self.connection.send(frame)
        except ConnectionClosed:
            pass  # the reader ends every stream with the close's error

    def forget(self, stream: ClientStream) -> bool:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            return True
        return False

    def _lost(self, closed: ConnectionClosed | None) -> LLMBrickError:
        """What a stream cut off by this connection's close ends with.

        The close codes the server uses for errors (1008, 1009, 1011) are its report,
        ended as such; any other close is a connection lost (``Unavailable``).
        """
        code = self.connection.close_code
        reason = self.connection.close_reason
        message = (
            f"the WebSocket connection closed (code {code}, {reason or 'no reason'}) "
            "before the stream ended"
        )
        details = {"closeCode": code, "closeReason": reason}
        neutral = code_for_close(code)
        failure: LLMBrickError
        if neutral is ErrorCode.UNAVAILABLE:
            failure = Unavailable(message, details=details)
        else:
            failure = LLMBrickError(message, code=neutral, details=details)
        failure.__cause__ = closed
        return failure

    async def _read(self) -> None:
        closed: ConnectionClosed | None = None
        try:
            while True:
                try:
                    data = await self.connection.recv()
                except ConnectionClosed as exc:
                    closed = exc
                    return
                try:
                    frame = parse_server_frame(data)
                except ValueError as exc:
                    _log.warning("ignoring a frame outside the protocol: %s", exc)
                    continue
                self._dispatch(frame)
        finally:
            for stream in list(self.streams.values()):
                stream._events.put_nowait(self._lost(closed))
            self.streams.clear()
            while self.flows:
                waiter = self.flows.popleft()
                if not waiter.done():
                    waiter.set_exception(self._lost(closed))

    def _dispatch(self, frame: ServerFrame) -> None:
        if frame.flows is not None:
            if self.flows:
                waiter = self.flows.popleft()
                if not waiter.done():  # its caller may have given up
                    waiter.set_result(frame.flows)
            return
        stream = self.streams.get(frame.id) if frame.id is not None else None
        if frame.stream_id is not None:
            if stream is not None:
                stream.stream_id = frame.stream_id
        elif frame.event is not None:
            if stream is not None:
                if frame.event["type"] in TERMINAL_TYPES:
                    del self.streams[stream.id]
                stream._events.put_nowait(frame.event)
        elif frame.error is not None:
            if stream is not None:
                # The server could not act on our frame: its report, so the stream's end.
                del self.streams[stream.id]
                stream._events.put_nowait(exception_for(frame.error))
            elif frame.id is None and self.flows:
                # A server without the ``flows`` frame says it does not know it.
                waiter = self.flows.popleft()
                if not waiter.done():
                    waiter.set_exception(exception_for(frame.error))
            else:
                self.problems.append(frame.error)


class WebSocketClient(FlowClient):
    """Streams flows over one WebSocket connection, opened on first use.

    The connection is opened by the first stream (or :meth:`list_flows`) and
    carries every stream after it; if it closes, the next stream opens a new one.

    Errors follow the policy of :class:`llmbrick.client.FlowClient`:

    * ``Unavailable`` is raised, with the ``websockets`` or socket error as
      ``__cause__``, when no llmbrick server could be reached: refused, DNS or
      TLS failure, no handshake within ``timeout``, a handshake refused without
      llmbrick's error body (a path that is no WebSocket endpoint), or the
      connection closed before the stream's first event.
    * What the server reported is the stream's one terminal ``error`` event:
      a stream that cannot start, a frame it could not act on, a handshake it
      refused with llmbrick's error body (a wrong API key: ``UNAUTHENTICATED``),
      and the close codes it uses for errors (1008 ``INVALID_ARGUMENT``, 1009
      ``RESOURCE_EXHAUSTED``, 1011 ``INTERNAL``; ``details`` has ``closeCode``
      and ``closeReason``). A connection lost after the first event ends the
      stream with ``UNAVAILABLE``.

    Args:
        url: the endpoint, ``ws://host:port/ws`` or ``wss://host:port/ws``.
        api_key: sent on the handshake as ``Authorization: Bearer <key>`` (a
            browser cannot set it; this client can).
        headers: HTTP headers sent on the handshake; the flows see them.
        timeout: seconds for the opening handshake and for the closing one.
        ca_file: a PEM file of the CAs to trust for ``wss://`` (a private CA).
        cert_file, key_file: a client certificate and its key (mutual TLS).
        **options: passed to ``websockets.asyncio.client.connect``; compression
            is off unless ``compression="deflate"`` is given, and incoming
            frames may be up to 16 MiB (``max_size``).

    Attributes:
        problems: ``error`` frames from the server that named no stream of ours.
    """

    transport = "WebSocket"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 10.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(api_key=api_key, headers=headers, timeout=timeout)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("ws", "wss"):
            raise ValueError(f"a WebSocket URL is ws://HOST:PORT/ws or wss://...; got {url!r}")
        context = tls_context(ca_file, cert_file, key_file)
        if context is not None:
            if scheme != "wss":
                raise ValueError("ca_file and cert_file are for wss:// URLs")
            options.setdefault("ssl", context)
        options.setdefault("compression", None)
        options.setdefault("max_size", 16 << 20)
        self.url = url
        self.problems: list[ErrorInfo] = []
        self._options = options
        self._socket: _Socket | None = None
        self._opening = asyncio.Lock()
        self._ids = itertools.count(1)

    @property
    def connection(self) -> ClientConnection | None:
        """The current connection, once one was opened."""
        return self._socket.connection if self._socket is not None else None

    @property
    def close_code(self) -> int | None:
        """The close code of the last connection, once it closed."""
        return self._socket.connection.close_code if self._socket is not None else None

    def stream(
        self,
        flow: str | None,
        request: FlowRequest,
        *,
        id: str | None = None,
    ) -> ClientStream:
        """A stream of ``flow`` for ``request``, started when first iterated.

        Args:
            flow: the flow's name; ``None`` keeps the request's own ``flow`` field
                (the server's ``default`` flow if it has none).
            request: the flow's request, e.g. ``{"messages": [...]}`` or a
                ``ChatRequest`` (only the fields that were set are sent).
            id: the stream id on the wire; unique numbers by default.

        Raises:
            ValueError: ``id`` is empty or longer than the protocol allows.
        """
        if id is not None and not 0 < len(id) <= MAX_ID_LENGTH:
            raise ValueError(f"a stream id must have 1 to {MAX_ID_LENGTH} characters")
        stream_id = id if id is not None else str(next(self._ids))
        payload = build_payload(flow, request)
        return ClientStream(self, stream_id, lambda wire_id: encode_start(wire_id, payload))

    def resume(self, stream_id: str, after: int = 0, *, token: str | None = None) -> ClientStream:
        """The events of a kept stream after ``after``, with a ``resume`` frame on this
        connection (see :meth:`FlowClient.resume`)."""
        wire_id = str(next(self._ids))
        return ClientStream(
            self, wire_id, lambda wire: encode_resume(wire, stream_id, after, token)
        )

    async def start(
        self,
        flow: str | None,
        request: FlowRequest,
        *,
        id: str | None = None,
    ) -> ClientStream:
        """As :meth:`stream`, but send the ``start`` frame before returning.

        Raises:
            Unavailable: no server could be reached.
        """
        stream = self.stream(flow, request, id=id)
        await stream.start()
        return stream

    async def cancel(self, stream_id: str, *, token: str | None = None) -> None:
        """End a stream with a ``CANCELLED`` terminal event (see :meth:`FlowClient.cancel`).

        ``stream_id`` is the server's id; the wire id of one of this connection's
        own streams works too (its ``CANCELLED`` event then ends that stream here).
        A refusal (``NOT_FOUND``) comes back as an error frame on the connection,
        which this method does not wait for.

        Raises:
            Unavailable: no server could be reached.
        """
        socket = self._socket
        if socket is not None and stream_id in socket.streams:
            await socket.send_quietly(encode_cancel(stream_id))
            return
        try:
            socket = await self._open()
        except _Refused as refused:
            raise exception_for(refused.error) from refused
        await socket.send(encode_cancel_kept(stream_id, token))

    async def list_flows(self) -> list[dict[str, Any]]:
        """The server's flows, with a ``flows`` frame on the connection.

        Raises:
            Unavailable: no server could be reached.
            LLMBrickError: the server refused the handshake (e.g. ``Unauthenticated``).
        """
        try:
            socket = await self._open()
        except _Refused as refused:
            raise exception_for(refused.error) from refused
        waiter = asyncio.get_running_loop().create_future()
        socket.flows.append(waiter)
        await socket.send(encode_list_flows())
        result: list[dict[str, Any]] = await waiter
        return result

    async def _close(self) -> None:
        async with self._opening:
            socket = self._socket
        if socket is not None:
            await socket.connection.close()
            await asyncio.wait([socket.reader])

    async def _open(self) -> _Socket:
        """The open connection, opening one if there is none (one handshake at a time)."""
        async with self._opening:
            self._check_open()
            socket = self._socket
            if socket is not None and not socket.closed:
                return socket
            try:
                options = {
                    "open_timeout": self.timeout,
                    "close_timeout": self.timeout,
                    **self._options,
                }
                connection = await ws_connect(self.url, additional_headers=self.headers, **options)
            except InvalidStatus as exc:
                error = error_in_body(bytes(exc.response.body or b""))
                if error is not None:
                    raise _Refused(error) from exc
                raise Unavailable(f"{self.url} refused the WebSocket handshake: {exc}") from exc
            except (OSError, TimeoutError, InvalidURI, WebSocketException) as exc:
                what = str(exc) or type(exc).__name__
                raise Unavailable(f"cannot open a WebSocket to {self.url}: {what}") from exc
            self._socket = socket = _Socket(connection, self.problems)
            return socket

    async def _send_start(self, stream: ClientStream) -> _Socket:
        socket = await self._open()
        if stream.id in socket.streams:
            raise ValueError(f"stream id {stream.id!r} is already running on this connection")
        socket.streams[stream.id] = stream
        try:
            await socket.send(stream._opening(stream.id))
        except BaseException:
            socket.forget(stream)
            raise
        return socket


@asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[WebSocketClient]:
    """A :class:`WebSocketClient` on ``url``, closed when the block ends.

    The connection opens with the first stream, so a server that cannot be
    reached raises ``Unavailable`` there, as with the SSE and gRPC clients.

    Args:
        url: the endpoint, e.g. ``ws://127.0.0.1:8000/ws``.
        **options: as for :class:`WebSocketClient` (``api_key``, ``headers``,
            ``timeout``, ``ca_file``, ... and ``websockets`` options).
    """
    async with WebSocketClient(url, **options) as client:
        yield client
