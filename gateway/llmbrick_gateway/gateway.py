"""``Gateway``: SSE, WebSocket and gRPC in one process, one event loop, one runtime.

The HTTP port carries every HTTP route llmbrick has (SSE, kept streams, the
OpenAI API, the AI SDK's UI stream, the playground, WebSocket), built with
:func:`llmbrick_http.build_app` under one :class:`~llmbrick_http.HttpSettings`
(allowed hosts, CORS, connection limits, TLS) and served by
:class:`llmbrick_http.HttpServer`. gRPC has its own port, with the same TLS
files. Starting opens the runtime's stream store; stopping drains the streams,
then closes it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from llmbrick import FlowRuntime
from llmbrick.serving import as_runtime, settle_heap

from ._listen import bind_http
from ._transports import TRANSPORTS, require_transport

# The adapters and their libraries are imported only for the transports served, so
# an installation with one extra runs that transport (see _transports).
if TYPE_CHECKING:
    import grpc as grpc_lib
    from litestar import Litestar, Router

    from llmbrick_grpc import GrpcServer
    from llmbrick_http import HttpServer, HttpSettings

__all__ = ["TRANSPORTS", "Gateway", "TlsSource", "banner"]

_log = logging.getLogger("llmbrick.gateway")

#: Where the AI SDK's UI message stream is mounted (under the SSE prefix).
UI_PATH = "/v1/ui/chat"

# Gateway(websocket={...}) keys that are uvicorn's business, not the route's.
_WS_UVICORN = {
    "ping_interval": "ws_ping_interval",
    "ping_timeout": "ws_ping_timeout",
    "compression": "ws_per_message_deflate",
}
# The SSE options the UI stream route shares with the other HTTP streaming routes.
_UI_SHARED = ("prefix", "max_body_size", "ping_interval", "max_buffer_bytes")
_LABELS = {"sse": "SSE", "websocket": "WebSocket", "grpc": "gRPC", "flows": "flows"}
# Routes for people rather than clients: each URL is printed with what it is for.
_PAGES = {
    "metrics": ("metrics", "Prometheus"),
    "openai": ("OpenAI", "base URL for OpenAI SDKs"),
    "ui": ("AI SDK", "the api of useChat"),
    "playground": ("playground", "open it in a browser"),
}


class TlsSource(Protocol):
    """PEM files for TLS, as ``Gateway(tls=...)`` takes them; ``llmbrick_http.TlsFiles`` is one.

    A protocol rather than ``TlsFiles`` itself, so that a gateway serving only
    gRPC needs no HTTP adapter installed.
    """

    @property
    def cert(self) -> str:
        """The certificate chain."""
        ...

    @property
    def key(self) -> str:
        """Its private key (unencrypted)."""
        ...

    @property
    def client_ca(self) -> str | None:
        """CA bundle for client certificates (mutual TLS), or ``None``."""
        ...


class Gateway:
    """Serve one runtime over SSE and WebSocket (one HTTP port) and gRPC (its own port).

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime.
        host: the interface every transport binds (127.0.0.1 unless you mean it);
            a name is bound on each of its addresses, IPv4 and IPv6.
        http_port: SSE and WebSocket share it; 0 picks a free port.
        grpc_port: gRPC's port; 0 picks a free port.
        transports: which of ``"sse"``, ``"websocket"``, ``"grpc"`` to serve.
        drain_timeout: seconds running streams get to finish on shutdown before
            they are ended with an ``UNAVAILABLE`` error event.
        log_level: uvicorn's log level name.
        http: limits, allowed hosts, CORS origins for the HTTP port. Default:
            the defaults, and only loopback names in ``Host`` when bound to a
            loopback address (:func:`llmbrick_http.loopback_hosts`), against DNS
            rebinding.
        tls: serve HTTPS, WSS and gRPC over TLS with these files; with a
            ``client_ca``, gRPC requires client certificates (mutual TLS) and
            HTTPS asks for them. Default: ``http.tls``, else plaintext.
        openai: serve the OpenAI API under ``/v1`` (with SSE).
        ui: serve the AI SDK's UI message stream at ``/v1/ui/chat`` (with SSE).
        playground: serve the playground page at ``/playground``, and redirect ``/`` there.
        sse: options for :func:`llmbrick_sse.create_http_routers` (``prefix``,
            ``path``, ``max_body_size``, ``ping_interval``, ``max_buffer_bytes``);
            the UI stream route shares them but ``path``.
        websocket: options for :func:`llmbrick_websocket.create_router`, plus
            ``ping_interval``, ``ping_timeout`` and ``compression`` (uvicorn's).
        grpc: options for ``GrpcServer``.
        routes: more Litestar route handlers for the HTTP app (a page, an admin view).
        metrics: count streams into Prometheus metrics, served at ``/metrics`` on the
            HTTP port (the ``metrics`` extra; see :mod:`llmbrick_telemetry`).
        metrics_port: also serve them on a port of their own (a gRPC-only
            gateway has no HTTP port); implies ``metrics``.
        tracing: trace streams and bricks with OpenTelemetry (the ``otel`` extra),
            into the global tracer provider.
        out: where the endpoint URLs are printed on start (``None``: nowhere).
        sockets: listening sockets to serve HTTP on instead of binding
            ``host:http_port`` (a supervisor's, inherited by its workers).
        reuse_port: bind gRPC's port with ``SO_REUSEPORT``, shared with other
            workers; the port must then be held by the supervisor (see
            :mod:`llmbrick_gateway._workers`), or a taken port goes unnoticed.

    Raises:
        ImportError: a transport's extra is not installed (the message names it).
    """

    def __init__(
        self,
        target: object = None,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 50051,
        transports: Iterable[str] = TRANSPORTS,
        drain_timeout: float = 10.0,
        log_level: str = "info",
        http: HttpSettings | None = None,
        tls: TlsSource | None = None,
        openai: bool = False,
        ui: bool = False,
        playground: bool = False,
        sse: Mapping[str, Any] | None = None,
        websocket: Mapping[str, Any] | None = None,
        grpc: Mapping[str, Any] | None = None,
        routes: Iterable[Any] = (),
        out: TextIO | None = sys.stdout,
        sockets: Sequence[socket.socket] | None = None,
        reuse_port: bool = False,
        metrics: bool = False,
        metrics_port: int | None = None,
        tracing: bool = False,
    ) -> None:
        chosen = tuple(dict.fromkeys(transports))
        unknown = [name for name in chosen if name not in TRANSPORTS]
        if unknown or not chosen:
            raise ValueError(
                f"transports must be a non-empty subset of {', '.join(TRANSPORTS)}; "
                f"got {', '.join(chosen) or 'none'}"
            )
        if drain_timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0, got {drain_timeout!r}")
        for name in chosen:
            require_transport(name)  # ImportError naming the missing extra
        self.runtime: FlowRuntime = as_runtime(target)
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.transports = chosen
        self.drain_timeout = drain_timeout
        self.log_level = log_level
        self.out = out
        self.tls = tls if tls is not None else (http.tls if http is not None else None)
        self.urls: dict[str, str] = {}
        self.started = asyncio.Event()
        self._sockets = list(sockets) if sockets is not None else None
        self._stop_requested: asyncio.Event | None = None
        self._forced = False

        self.metrics_port = metrics_port
        self.telemetry: Any = None
        self._metrics_path: str | None = None
        routes = list(routes)
        if metrics or metrics_port is not None or tracing:
            from llmbrick_telemetry import install

            self.telemetry = install(
                self.runtime, metrics=metrics or metrics_port is not None, tracing=tracing
            )
            if self.telemetry.metrics is not None and ("sse" in chosen or "websocket" in chosen):
                routes.append(self.telemetry.router())
                self._metrics_path = "/metrics"
        self.http: HttpSettings | None = None
        self.app: Litestar | None = None
        self._uvicorn: dict[str, Any] = {"log_level": log_level, "timeout_graceful_shutdown": 5}
        self._pages: dict[str, str] = {}  # key of _PAGES -> path on the HTTP port
        if "sse" in chosen or "websocket" in chosen:
            self.http = self._http_settings(http)
            self.app = self._http_app(
                dict(sse or {}), dict(websocket or {}), openai, ui, playground, routes
            )
        self.grpc: GrpcServer | None = None
        if "grpc" in chosen:
            self.grpc = self._grpc_server(dict(grpc or {}), reuse_port)

    def _http_settings(self, given: HttpSettings | None) -> HttpSettings:
        from llmbrick_http import HttpSettings, TlsFiles, loopback_hosts

        settings = given or HttpSettings(allowed_hosts=loopback_hosts(self.host))
        tls = self.tls
        if tls is not None and not isinstance(tls, TlsFiles):
            tls = TlsFiles(tls.cert, tls.key, tls.client_ca)
        if settings.tls != tls:
            settings = settings.with_options(tls=tls)
        return settings

    def _http_app(
        self,
        sse: dict[str, Any],
        websocket: dict[str, Any],
        openai: bool,
        ui: bool,
        playground: bool,
        routes: Iterable[Any],
    ) -> Litestar:
        from llmbrick_http import build_app
        from llmbrick_sse import create_meta_router

        assert self.http is not None
        handlers: list[Any] = []
        prefix = str(sse.get("prefix", "")).rstrip("/")
        if "sse" in self.transports:
            from llmbrick_sse import create_http_routers

            handlers += create_http_routers(self.runtime, settings=self.http, openai=openai, **sse)
            if openai:
                self._pages["openai"] = f"{prefix}/v1"
            if ui:
                from llmbrick_sse import create_ui_router

                shared = {key: sse[key] for key in _UI_SHARED if key in sse}
                handlers.append(create_ui_router(self.runtime, settings=self.http, **shared))
                self._pages["ui"] = prefix + UI_PATH
        else:
            handlers.append(create_meta_router(self.runtime, prefix=prefix))
        ws_path = "/ws"
        if "websocket" in self.transports:
            handlers.append(self._websocket_router(websocket))
            ws_path = str(websocket.get("prefix", "")).rstrip("/") + websocket.get("path", "/ws")
        if playground:
            from llmbrick_sse import create_playground_router

            handlers.append(
                create_playground_router(
                    flows_path=f"{prefix}/flows",
                    sse_path=prefix + sse.get("path", "/chat/completions"),
                    ws_path=ws_path,
                    ui_path=self._pages.get("ui"),
                    streams_path=f"{prefix}/streams",
                )
            )
            self._pages["playground"] = "/playground"
        handlers.extend(routes)
        if self._metrics_path is not None:
            self._pages["metrics"] = self._metrics_path
        return build_app(handlers, self.http)

    def _websocket_router(self, websocket: dict[str, Any]) -> Router:
        """The WebSocket route, and the uvicorn options its limits need (size, pings)."""
        from llmbrick_websocket import create_router

        assert self.http is not None
        self._uvicorn.update(
            ws="auto",
            ws_max_size=websocket.get("max_message_size", 1 << 20),
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            # Off: token frames are small, and deflate costs CPU per frame and memory
            # per connection (see docs/websocket.md).
            ws_per_message_deflate=False,
        )
        for key in [key for key in websocket if key in _WS_UVICORN]:
            self._uvicorn[_WS_UVICORN[key]] = websocket.pop(key)
        return create_router(self.runtime, settings=self.http, **websocket)

    def _grpc_server(self, options: dict[str, Any], reuse_port: bool) -> GrpcServer:
        from llmbrick_grpc import GrpcServer

        if self.tls is not None:
            options.setdefault("credentials", _grpc_credentials(self.tls))
        if reuse_port:
            # Workers share the port; the supervisor holds it so a taken one still fails.
            options["options"] = [*options.get("options", ()), ("grpc.so_reuseport", 1)]
        return GrpcServer(self.runtime, **options)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, on uvloop when it is installed."""
        settle_heap()
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop ships with the extras
            asyncio.run(self.serve())
        else:
            uvloop.run(self.serve())

    def stop(self) -> None:
        """Ask a serving gateway to drain and stop (as SIGTERM does)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve(self) -> None:
        """Open the store, start every transport, print the endpoints, serve until
        stopped, then drain and close the store.

        Raises:
            llmbrick.Unavailable: the stream store cannot be opened (its message says why).
            OSError: the HTTP port cannot be bound.
            RuntimeError: the gRPC port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        store = self.runtime.store
        if store is not None:
            await store.open()  # nothing is served without the store it needs
        self._stop_requested = asyncio.Event()
        signals = _install_signal_handlers(loop, self._on_signal)
        sockets: list[socket.socket] = []
        http: HttpServer | None = None
        http_task: asyncio.Task[None] | None = None
        metrics_server: Any = None
        try:
            if self.app is not None:
                sockets = self._sockets or bind_http(self.host, self.http_port)
                http, http_task = self._start_http(sockets)
            if self.metrics_port is not None and self.telemetry is not None:
                metrics_server = await self.telemetry.serve(self.host, self.metrics_port)
                self.urls["metrics"] = metrics_server.url  # its own port wins in the banner
            if self.grpc is not None:
                await self.grpc.start(self.host, self.grpc_port)
                scheme = "grpc" if self.tls is None else "grpcs"
                self.urls["grpc"] = f"{scheme}://{_url_host(self.host)}:{self.grpc.port}"
            self._announce()
            self.started.set()
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._stop_requested.wait())
            ]
            if http_task is not None:
                waiters.append(http_task)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()
            await self._drain()
        finally:
            if http is not None and http_task is not None:
                http.should_exit = True
                await http_task
            if self.grpc is not None:
                await self.grpc.stop(1.0)
            if metrics_server is not None:
                await metrics_server.aclose()
            await self.runtime.aclose()
            if store is not None:
                await store.aclose()  # after the drain: the last events are kept
            for sock in sockets:
                sock.close()
            for sig in signals:
                loop.remove_signal_handler(sig)
            _log.info("gateway stopped")

    def _start_http(self, sockets: list[socket.socket]) -> tuple[HttpServer, asyncio.Task[None]]:
        from llmbrick_http import HttpServer, uvicorn_config

        assert self.app is not None and self.http is not None
        server = HttpServer(uvicorn_config(self.app, self.http, **self._uvicorn))
        task = asyncio.create_task(server.serve(sockets=sockets))
        port = sockets[0].getsockname()[1]
        base = f"{_url_host(self.host)}:{port}"
        http, ws = ("http", "ws") if self.tls is None else ("https", "wss")
        if "sse" in self.transports:
            self.urls["sse"] = f"{http}://{base}/chat/completions"
        if "websocket" in self.transports:
            self.urls["websocket"] = f"{ws}://{base}/ws"
        self.urls["flows"] = f"{http}://{base}/flows"
        self.urls["health"] = f"{http}://{base}/healthz"
        for key, path in self._pages.items():
            self.urls[key] = f"{http}://{base}{path}"
        return server, task

    async def _drain(self) -> None:
        self.runtime.shutdown()  # at once: health answers 503 and new streams are refused
        running = self.runtime.active_streams
        _log.info("draining: %d stream(s) running, up to %g s", running, self.drain_timeout)
        if self.grpc is not None:
            await self.grpc.enter_graceful_shutdown()
        if await self.runtime.drain(self.drain_timeout) and not self._forced:
            return
        stopped = self.runtime.stop_streams()
        _log.warning("ended %d stream(s) still running after the drain timeout", stopped)
        # The stopped streams send their UNAVAILABLE event; give them a moment to flush.
        await self.runtime.drain(2.0)

    def _on_signal(self) -> None:
        assert self._stop_requested is not None
        if self._stop_requested.is_set():
            self._forced = True
            self.runtime.stop_streams()
        self._stop_requested.set()

    def _announce(self) -> None:
        if self.out is not None:
            print(banner(self.runtime.registry.names(), self.urls), file=self.out, flush=True)


def banner(flows: Iterable[str], urls: Mapping[str, str], extra: Iterable[str] = ()) -> str:
    """What the gateway prints when it is ready: its flows, one line per endpoint, how to stop.

    Args:
        flows: the flow names.
        urls: endpoint URLs by key (``sse``, ``websocket``, ``grpc``, ``flows``, ``health``).
        extra: more lines, before the last one (the workers' process ids).
    """
    lines = [f"llmbrick gateway: flows {', '.join(flows) or 'none'}"]
    for key in (*TRANSPORTS, "flows", "health"):
        if key in urls:
            lines.append(f"  {_LABELS.get(key, key):<10} {urls[key]}")
    for key, (label, purpose) in _PAGES.items():
        if key in urls:
            lines.append(f"  {label:<10} {urls[key]} ({purpose})")
    lines.extend(extra)
    lines.append("Press Ctrl+C to stop (running streams get to finish first).")
    return "\n".join(lines)


def _grpc_credentials(tls: TlsSource) -> grpc_lib.ServerCredentials:
    """gRPC's TLS credentials from the same files as HTTPS; a client CA requires client certs."""
    import grpc

    def read(path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    client_ca = read(tls.client_ca) if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(read(tls.key), read(tls.cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, handler: Callable[[], None]
) -> list[signal.Signals]:
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
        installed.append(sig)
    return installed
