"""uvicorn with the limits of :class:`HttpSettings` enforced at the connection level.

uvicorn bounds neither the size of a request head nor the time a client
takes to send it, and keeps connections that never send a request. The
protocol class here adds those limits (431, 408, close) and a cap on open
connections (503, close), so a slow or greedy client costs a bounded amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import HttpSettings

__all__ = ["ON_LOST_KEY", "HttpServer", "uvicorn_config"]

#: Scope key of a request served by llmbrick's HTTP protocol: ``hook(callback)`` has
#: ``callback`` called (soon) if the connection is lost; ``hook(callback, remove=True)``
#: withdraws it. Absent under other servers: wait on ``receive`` for ``http.disconnect``.
ON_LOST_KEY = "llmbrick.on_lost"

#: Seconds a connection refused mid-body keeps draining what the client still sends, so that
#: closing it does not reset the connection before the client reads the answer.
_LINGER = 2.0

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over the limit."""


def _guarded_protocol(settings: HttpSettings) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class enforcing ``settings``' connection limits."""
    max_head = settings.max_header_bytes
    head_timeout = settings.header_timeout
    max_connections = settings.max_connections

    class _Guarded(HttpToolsProtocol):
        # Slots, not instance attributes: uvicorn's own fill the instance dict up to the size
        # CPython still shares between instances, and five more would give every connection a
        # dict of its own (1.5 KB).
        __slots__ = ("_discarding", "_head_bytes", "_head_timer", "_in_head", "_lost", "_raw_head")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = self._raw_head = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._in_head = True
            self._discarding = False
            self._lost: Callable[[], object] | None = None
            # Requests pipelined behind a running one are rare; an empty list is 56 bytes
            # where uvicorn's empty deque is 624.
            self.pipeline = _Pipeline()  # type: ignore[assignment]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow._is_writable_event = _Event(True)  # type: ignore[assignment]
            if max_connections is not None and len(self.connections) > max_connections:
                self._refuse(503, "the server has too many open connections; retry later")
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            lost, self._lost = self._lost, None
            if lost is not None:
                self.loop.call_soon(lost)
            super().connection_lost(exc)

        def on_lost(self, callback: Callable[[], object], remove: bool = False) -> None:
            """Have ``callback`` called once if the connection is lost (``remove``: no more).

            A streaming response learns of its client's leaving here rather than from a
            task waiting on ``receive`` for ``http.disconnect``: one task less per stream.
            """
            if not remove:
                self._lost = callback
            elif self._lost == callback:
                self._lost = None

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return  # the rest of a refused request: read and dropped
            self._unset_keepalive_if_required()
            if self._in_head:
                self._raw_head += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _HeadTooLarge):
                    raise
                self._refuse(431, f"the request head is larger than {max_head} bytes")
            except httptools.HttpParserError:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, "invalid HTTP request")
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            else:
                # Still no end of the head after more bytes than it may have: a header
                # line too long to have been counted yet.
                if self._in_head and self._raw_head > max_head:
                    self._refuse(431, f"the request head is larger than {max_head} bytes")

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > max_head:
                raise _HeadTooLarge

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._head_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_head = False
            self._head_bytes = self._raw_head = 0
            previous = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle is not previous:  # not an upgrade: a new request
                # Nothing has waited on it yet: the request's task starts on the next turn.
                cycle.message_event = _Event(False)  # type: ignore[assignment]
                self.scope[ON_LOST_KEY] = self.on_lost  # type: ignore[literal-required]
            if cycle is not None and cycle.transport is self.transport:
                cycle.transport = _Lingering(self.transport, self)  # type: ignore[assignment]

        def linger(self) -> None:
            """Close after an answer sent before the body ended: drain, then close."""
            transport = self.transport
            if transport.is_closing():
                return
            if self.cycle is None or not self.cycle.more_body:
                transport.close()
                return
            self._close_softly()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._lost = None
            # The next request's head starts counting from zero.
            self._head_bytes = self._raw_head = 0
            self._in_head = True

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            # A connection between requests is uvicorn's keep-alive business.
            if self._in_head and (self.cycle is None or self.cycle.response_complete):
                self._refuse(408, f"no complete request head within {head_timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            self._disarm()
            transport = self.transport
            if transport.is_closing():
                return
            body = message.encode()
            transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
            self._close_softly()

        def _close_softly(self) -> None:
            # Closing with unread input resets the connection, and the client may lose the
            # answer: end our side, drop what still arrives, close after a moment.
            transport = self.transport
            if not transport.can_write_eof():
                transport.close()
                return
            self._discarding = True
            transport.write_eof()
            self._head_timer = self.loop.call_later(_LINGER, transport.close)

    return _Guarded


class _Event:
    """What uvicorn needs of an ``asyncio.Event`` (set, clear, wait), in 56 bytes rather than
    about 700: every open connection holds two, mostly never awaited."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
        return True


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests, as a list: it only appends left and pops right."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class _Lingering:
    """The transport as a request cycle sees it: closing waits for the client's leftovers."""

    __slots__ = ("_protocol", "_transport", "write")

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write

    def close(self) -> None:
        self._protocol.linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def uvicorn_config(app: Any, settings: HttpSettings, **options: Any) -> uvicorn.Config:
    """A uvicorn config serving ``app`` with ``settings``' limits and TLS.

    Args:
        app: the ASGI app.
        settings: limits, TLS files.
        **options: other uvicorn settings (log level, WebSocket options...).
    """
    config: dict[str, Any] = {
        "http": _guarded_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
    }
    tls = settings.tls
    if tls is not None:
        config.update(ssl_certfile=tls.cert, ssl_keyfile=tls.key)
        if tls.client_ca is not None:
            config.update(ssl_ca_certs=tls.client_ca, ssl_cert_reqs=ssl.CERT_OPTIONAL)
    config.update(options)
    return uvicorn.Config(app, **config)


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: llmbrick drains the runtime before stopping."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
