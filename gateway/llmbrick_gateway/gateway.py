"""``Gateway``: SSE, WebSocket and gRPC in one process, one event loop, one runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from llmbrick import FlowRuntime, as_runtime

from ._transports import TRANSPORTS, require_transport

# The adapters and their libraries are imported only for the transports served, so
# an installation with one extra runs that transport (see _transports).
if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar, Router

    from llmbrick_grpc import GrpcServer
    from llmbrick_websocket import WebSocketServer

__all__ = ["TRANSPORTS", "Gateway"]

_log = logging.getLogger("llmbrick.gateway")


def _http_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn without its own signal handling: the gateway drains before it stops."""
    import uvicorn

    class _HTTPServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _HTTPServer(config)


class Gateway:
    """Serve one runtime over SSE and WebSocket (one HTTP port) and gRPC (its own port).

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime.
        host: the interface every transport binds (127.0.0.1 unless you mean it).
        http_port: SSE and WebSocket share it; 0 picks a free port.
        grpc_port: gRPC's port; 0 picks a free port.
        transports: which of ``"sse"``, ``"websocket"``, ``"grpc"`` to serve.
        drain_timeout: seconds running streams get to finish on shutdown before
            they are ended with an ``UNAVAILABLE`` error event.
        log_level: uvicorn's and gRPC's log level name.
        sse, websocket, grpc: keyword options for ``llmbrick_sse.create_router``,
            ``WebSocketServer`` and ``GrpcServer``.
        routes: more Litestar route handlers for the HTTP app (a page, an admin view).
        out: where the endpoint URLs are printed on start (``None``: nowhere).

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
        sse: dict[str, Any] | None = None,
        websocket: dict[str, Any] | None = None,
        grpc: dict[str, Any] | None = None,
        routes: Iterable[Any] = (),
        out: TextIO | None = sys.stdout,
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
        self.urls: dict[str, str] = {}
        self.started = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._forced = False

        self._uvicorn: dict[str, Any] = {}
        self.sse: Router | None = None
        self.websocket: WebSocketServer | None = None
        self.app: Litestar | None = None
        if "sse" in chosen or "websocket" in chosen:
            from litestar import Litestar
            from litestar.exceptions import HTTPException

            from llmbrick_sse import create_meta_router, create_router, http_error_handler

            handlers: list[Any] = [create_meta_router(self.runtime), *routes]
            if "sse" in chosen:
                self.sse = create_router(self.runtime, **(sse or {}))
                handlers.append(self.sse)
            if "websocket" in chosen:
                from llmbrick_websocket import WebSocketServer

                self.websocket = WebSocketServer(self.runtime, **(websocket or {}))
                handlers.append(self.websocket.router)
                self._uvicorn.update(self.websocket.uvicorn_options())
            self.app = Litestar(
                route_handlers=handlers,
                openapi_config=None,
                logging_config=None,
                exception_handlers={HTTPException: http_error_handler},
            )
        self.grpc: GrpcServer | None = None
        if "grpc" in chosen:
            from llmbrick_grpc import GrpcServer

            self.grpc = GrpcServer(self.runtime, **(grpc or {}))

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, on uvloop when it is installed."""
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
        """Start every transport, print the endpoints, serve until stopped, then drain."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        signals = _install_signal_handlers(loop, self._on_signal)
        http: uvicorn.Server | None = None
        http_task: asyncio.Task[None] | None = None
        try:
            if self.app is not None:
                sock = socket.create_server((self.host, self.http_port), backlog=4096)
                port = sock.getsockname()[1]
                import uvicorn

                http = _http_server(
                    uvicorn.Config(
                        self.app,
                        log_level=self.log_level,
                        log_config=None,
                        access_log=False,
                        lifespan="off",
                        http="auto",
                        timeout_graceful_shutdown=5,
                        **self._uvicorn,
                    )
                )
                http_task = asyncio.create_task(http.serve(sockets=[sock]))
                base = f"{_url_host(self.host)}:{port}"
                if self.sse is not None:
                    self.urls["sse"] = f"http://{base}/chat/completions"
                if self.websocket is not None:
                    self.urls["websocket"] = f"ws://{base}/ws"
                self.urls["flows"] = f"http://{base}/flows"
                self.urls["health"] = f"http://{base}/healthz"
            if self.grpc is not None:
                await self.grpc.start(self.host, self.grpc_port)
                self.urls["grpc"] = f"grpc://{_url_host(self.host)}:{self.grpc.port}"
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
            await self.runtime.aclose()
            for sig in signals:
                loop.remove_signal_handler(sig)
            _log.info("gateway stopped")

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
        if self.out is None:
            return
        names = ", ".join(self.runtime.registry.names()) or "none"
        lines = [f"llmbrick gateway: flows {names}"]
        labels = {
            "sse": "SSE",
            "websocket": "WebSocket",
            "grpc": "gRPC",
            "flows": "flows",
            "health": "health",
        }
        for key, label in labels.items():
            if key in self.urls:
                lines.append(f"  {label:<10} {self.urls[key]}")
        lines.append("Press Ctrl+C to stop (running streams get to finish first).")
        print("\n".join(lines), file=self.out, flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, handler: Any) -> list[signal.Signals]:
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
        installed.append(sig)
    return installed
