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
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from llmbrick import (
    TERMINAL_TYPES,
    ErrorCode,
    ErrorInfo,
    Event,
    InvokeResult,
    LLMBrickError,
    collect_events,
)

from .codec import MAX_ID_LENGTH, code_for_close, encode_cancel, encode_start, parse_server_frame

__all__ = ["ClientStream", "WebSocketClient", "connect"]

_log = logging.getLogger("llmbrick.websocket.client")


def _code(value: object) -> ErrorCode:
    try:
        return ErrorCode(str(value))
    except ValueError:
        return ErrorCode.INTERNAL


class ClientStream:
    """One stream on a :class:`WebSocketClient`; an async iterator of its events.

    Iteration sends the ``start`` frame if :meth:`start` was not awaited, yields
    each event (the terminal ``done`` or ``error`` event last) and then stops.
    It raises :class:`llmbrick.LLMBrickError` if the server rejected the frame or
    the connection closed before the terminal event. Leave early with
    :meth:`aclose` (or ``async with``), which cancels the stream on the server.
    """

    __slots__ = ("_client", "_events", "_finished", "_request", "_started", "id", "stream_id")

    def __init__(self, client: WebSocketClient, stream_id: str, request: dict[str, Any]) -> None:
        self.id = stream_id
        #: The server's id of the stream (to resume it), once the server confirmed the start.
        self.stream_id: str | None = None
        self._client = client
        self._request = request
        self._events: asyncio.Queue[Event | LLMBrickError] = asyncio.Queue()
        self._started = False
        self._finished = False

    async def start(self) -> None:
        """Send the ``start`` frame now (iteration does it otherwise)."""
        if not self._started:
            self._started = True
            try:
                await self._client._send_start(self, self._request)
            except BaseException:
                self._finished = True  # never registered: nothing will ever arrive
                raise

    async def cancel(self) -> None:
        """Ask the server to cancel; the stream still ends with its terminal ``CANCELLED`` event."""
        if self._started and not self._finished:
            await self._client.cancel(self.id)

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
            raise item
        if item["type"] in TERMINAL_TYPES:
            self._finished = True
        return item

    async def aclose(self) -> None:
        """Stop listening; a stream still running on the server is cancelled there."""
        if self._finished:
            return
        self._finished = True
        if self._started and self._client._forget(self):
            await self._client._send_quietly(encode_cancel(self.id))

    async def __aenter__(self) -> ClientStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class WebSocketClient:
    """Streams flows over one WebSocket connection; build it with :func:`connect`.

    Args:
        connection: an open ``websockets`` client connection.

    Attributes:
        problems: ``error`` frames from the server that named no stream of ours.
    """

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.problems: list[ErrorInfo] = []
        self._streams: dict[str, ClientStream] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        """True once the connection is closed (every stream has ended)."""
        return self._reader.done()

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is closed."""
        return self.connection.close_code

    def stream(
        self,
        flow: str | None,
        request: Mapping[str, Any] | BaseModel,
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
        if isinstance(request, BaseModel):
            payload = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
        else:
            payload = dict(request)
        if flow is not None:
            payload["flow"] = flow
        return ClientStream(self, id if id is not None else str(next(self._ids)), payload)

    async def start(
        self,
        flow: str | None,
        request: Mapping[str, Any] | BaseModel,
        *,
        id: str | None = None,
    ) -> ClientStream:
        """As :meth:`stream`, but send the ``start`` frame before returning."""
        stream = self.stream(flow, request, id=id)
        await stream.start()
        return stream

    async def cancel(self, stream_id: str) -> None:
        """Ask the server to cancel a stream; its terminal event (``CANCELLED``) follows."""
        if stream_id in self._streams:
            await self._send_quietly(encode_cancel(stream_id))

    async def invoke(
        self, flow: str | None, request: Mapping[str, Any] | BaseModel
    ) -> InvokeResult:
        """Run a stream to its end and return every event, the text joined and the error.

        Raises:
            LLMBrickError: the connection closed, or the server rejected the frame.
        """
        events: list[Event] = []
        async with self.stream(flow, request) as stream:
            async for event in stream:
                events.append(event)
        return collect_events(events)

    async def close(self) -> None:
        """Close the connection; streams still running end with an error."""
        await self.connection.close()
        await asyncio.wait([self._reader])

    async def __aenter__(self) -> WebSocketClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send_start(self, stream: ClientStream, request: dict[str, Any]) -> None:
        if self._reader.done():
            raise self._closed_error()
        if stream.id in self._streams:
            raise ValueError(f"stream id {stream.id!r} is already running on this connection")
        self._streams[stream.id] = stream
        try:
            await self.connection.send(encode_start(stream.id, request))
        except ConnectionClosed:
            self._forget(stream)
            raise self._closed_error() from None

    async def _send_quietly(self, frame: str) -> None:
        try:
            await self.connection.send(frame)
        except ConnectionClosed:
            pass  # the reader ends every stream with the close's error

    def _forget(self, stream: ClientStream) -> bool:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            return True
        return False

    def _closed_error(self) -> LLMBrickError:
        code = self.connection.close_code
        reason = self.connection.close_reason
        return LLMBrickError(
            f"the WebSocket connection closed (code {code}, {reason or 'no reason'}) "
            "before the stream ended",
            code=code_for_close(code),
            details={"closeCode": code, "closeReason": reason},
        )

    async def _read(self) -> None:
        streams = self._streams
        try:
            async for data in self.connection:
                try:
                    frame = parse_server_frame(data)
                except ValueError as exc:
                    _log.warning("ignoring a frame outside the protocol: %s", exc)
                    continue
                stream = streams.get(frame.id) if frame.id is not None else None
                if frame.stream_id is not None:
                    if stream is not None:
                        stream.stream_id = frame.stream_id
                elif frame.event is not None:
                    if stream is not None:
                        if frame.event["type"] in TERMINAL_TYPES:
                            del streams[stream.id]
                        stream._events.put_nowait(frame.event)
                elif stream is not None and frame.error is not None:
                    del streams[stream.id]
                    error = frame.error
                    stream._events.put_nowait(
                        LLMBrickError(error["message"], code=_code(error.get("code")))
                    )
                elif frame.error is not None:
                    self.problems.append(frame.error)
        except ConnectionClosed:
            pass
        finally:
            for stream in list(streams.values()):
                stream._events.put_nowait(self._closed_error())
            streams.clear()


@asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[WebSocketClient]:
    """Open a :class:`WebSocketClient` on ``url``; closing it when the block ends.

    Args:
        url: the endpoint, e.g. ``ws://127.0.0.1:8000/ws``.
        **options: passed to ``websockets.asyncio.client.connect``; compression
            is off unless ``compression="deflate"`` is given, and incoming
            frames may be up to 16 MiB (``max_size``).
    """
    options.setdefault("compression", None)
    options.setdefault("max_size", 16 << 20)
    async with ws_connect(url, **options) as connection:
        client = WebSocketClient(connection)
        try:
            yield client
        finally:
            await client.close()
