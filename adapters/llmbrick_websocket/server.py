"""The WebSocket server: many independent streams over one socket, as a Litestar WebSocket route.

The connection logic (handshake checks, streams, the bounded writer) is in
:mod:`llmbrick_websocket.connection`; this module builds the route and the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Router, WebSocket, websocket

from llmbrick import FlowRuntime
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES
from llmbrick.serving import as_runtime, settle_heap
from llmbrick_http import HttpSettings, build_app, uvicorn_config

from .connection import Limits, serve_connection

__all__ = ["WebSocketServer", "create_router"]

F = TypeVar("F", bound=Callable[..., Any])


def create_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/ws",
    max_streams: int = 16,
    max_message_size: int = 1 << 20,
    max_protocol_errors: int = 5,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    close_timeout: float = 5.0,
    settings: HttpSettings | None = None,
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
        max_buffer_bytes: encoded bytes waiting per connection before its
            streams wait (a slow reader suspends its flows).
        close_timeout: seconds to flush and close when the server closes a socket.
        settings: the HTTP port's policy: upgrades from an ``Origin`` that is
            neither this host nor a CORS origin are refused with 403.

    Raises:
        ValueError: a limit is not positive.
    """
    for name, value in (
        ("max_streams", max_streams),
        ("max_message_size", max_message_size),
        ("max_protocol_errors", max_protocol_errors),
        ("max_buffer_bytes", max_buffer_bytes),
        ("close_timeout", close_timeout),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    limits = Limits(
        max_streams, max_message_size, max_protocol_errors, max_buffer_bytes, close_timeout
    )
    http = settings or HttpSettings()

    async def stream_socket(socket: WebSocket[Any, Any, Any]) -> None:
        await serve_connection(socket, runtime, limits, http)

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
            max_buffer_bytes, close_timeout: as :func:`create_router`.
        ping_interval: seconds between the server's keepalive pings (``None``:
            no pings); applies under :meth:`run`.
        ping_timeout: seconds a peer has to answer a ping before it is dropped
            and its streams cancelled; applies under :meth:`run`.
        compression: accept permessage-deflate when the client offers it; off by
            default because token frames are small and deflate costs CPU per
            frame and memory per connection (see docs/websocket.md).
        http: limits, allowed hosts, CORS origins (the ``Origin`` check) and TLS.
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
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        close_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: bool = False,
        http: HttpSettings | None = None,
    ) -> None:
        self.runtime = as_runtime(target)
        self.http = http or HttpSettings()
        self.router = create_router(
            self.runtime,
            prefix=prefix,
            path=path,
            max_streams=max_streams,
            max_message_size=max_message_size,
            max_protocol_errors=max_protocol_errors,
            max_buffer_bytes=max_buffer_bytes,
            close_timeout=close_timeout,
            settings=self.http,
        )
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.compression = compression
        self.app = build_app([self.router], self.http, on_shutdown=[self.runtime.aclose])

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

        options: dict[str, Any] = {"log_level": "info", "loop": "auto", "lifespan": "on"}
        options.update(self.uvicorn_options())
        options.update(uvicorn_options)
        config = uvicorn_config(self.app, self.http, host=host, port=port, **options)
        server = uvicorn.Server(config)
        settle_heap()
        server.run()
