"""``GrpcServer``: serve flows (and single bricks) over gRPC on ``grpc.aio``."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

from llmbrick import Brick, FlowRuntime
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES
from llmbrick.serving import as_runtime, settle_heap

from ._generated import brick_pb2, flow_pb2
from ._handlers import register_servicer
from ._options import merge_options
from .services import create_brick_servicer, create_servicer

__all__ = [
    "BRICK_SERVICE",
    "FLOW_SERVICE",
    "GrpcServer",
    "add_services",
    "server_options",
]

F = TypeVar("F", bound=Callable[..., Any])

_FLOW_DESCRIPTOR = flow_pb2.DESCRIPTOR.services_by_name["FlowService"]
_BRICK_DESCRIPTOR = brick_pb2.DESCRIPTOR.services_by_name["BrickService"]

#: Full names of the services, as health checks and reflection know them.
FLOW_SERVICE: str = _FLOW_DESCRIPTOR.full_name
BRICK_SERVICE: str = _BRICK_DESCRIPTOR.full_name

_log = logging.getLogger("llmbrick.grpc")


def server_options(
    *,
    max_message_bytes: int = 4 << 20,
    max_concurrent_streams: int = 1024,
    keepalive_time: float = 30.0,
    keepalive_timeout: float = 10.0,
    min_client_ping_interval: float = 10.0,
    max_pending_calls: int | None = None,
    max_pending_time: float = 3600.0,
) -> list[tuple[str, int]]:
    """The channel arguments ``GrpcServer`` sets, each for a reason (see docs/grpc.md).

    Args:
        max_message_bytes: largest message sent or received. Requests are small;
            4 MiB is what stock clients accept by default, so a response never
            exceeds what they can read.
        max_concurrent_streams: HTTP/2 streams one connection may run at once.
            More wait in the client's queue instead of failing, and one client
            cannot open unbounded streams on a shared server.
        keepalive_time: seconds between the server's HTTP/2 pings, also on idle
            connections and during silent streams: a client that vanished
            without closing the connection is noticed and its flow cancelled.
        keepalive_timeout: seconds to wait for a ping's answer before dropping
            the connection.
        min_client_ping_interval: the shortest client ping interval accepted
            without data; gRPC's default (5 minutes) answers clients that ping
            more often with GOAWAY ``too_many_pings``.
        max_pending_calls: calls received but not yet picked up by the Python
            server that may wait; past it gRPC's C core starts cancelling new ones
            at random (all of them at twice as many). ``None``: four connections'
            worth of ``max_concurrent_streams``.
        max_pending_time: seconds such a call may wait before the C core cancels
            it (gRPC's default is 30): a call the loop is slow to pick up waits,
            within its own deadline, instead of failing ``CANCELLED``.
    """
    pending = 4 * max_concurrent_streams if max_pending_calls is None else max_pending_calls
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        # gRPC's default counts a stream against MAX_CONCURRENT_STREAMS until the Python
        # server has released its call, which lags the client's view by a loop turn or
        # more: a client keeping to the limit got RST_STREAM(REFUSED_STREAM), i.e.
        # UNAVAILABLE. Off, the limit is the one advertised, and the streams beyond it
        # wait in the client's queue. The calls of reset streams are bounded below.
        ("grpc.http.overload_protection", 0),
        # grpc.aio picks up one call per method at a time, a few loop turns each, so on a
        # busy loop calls wait in the C core. Past these limits it cancels them
        # (CANCELLED, unseen by the runtime); keep them above what clients that respect
        # MAX_CONCURRENT_STREAMS can have waiting.
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", 2 * pending),
        ("grpc.server_max_unrequested_time_in_server", math.ceil(max_pending_time)),
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging through a long silence (a model thinking) instead of stopping after 2.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", int(min_client_ping_interval * 1000)),
        # gRPC sets SO_REUSEPORT by default: a second server on a taken port would start
        # silently and steal half the connections. Fail instead.
        ("grpc.so_reuseport", 0),
    ]


async def add_services(
    server: grpc.aio.Server,
    runtime: FlowRuntime,
    *,
    bricks: Mapping[str, Brick[Any, Any]] | None = None,
    health_checks: bool = True,
    reflection_service: bool = True,
    max_batch: int = 64,
    max_batch_bytes: int = 1 << 20,
    max_message_bytes: int | None = None,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> Any:
    """Add ``FlowService``, ``BrickService``, health and reflection to a ``grpc.aio`` server.

    This is how a gateway serves gRPC next to other adapters from one runtime.
    Bytes that are not a valid request message are answered INVALID_ARGUMENT.
    Use :func:`server_options` for the server's channel arguments.

    Args:
        server: a server not yet started.
        runtime: the runtime shared with every other adapter.
        bricks: bricks for ``BrickService`` by name (the mapping may grow later).
        health_checks: add ``grpc.health.v1.Health`` with every service SERVING.
        reflection_service: add server reflection, so stock tools need no .proto.
        max_batch, max_batch_bytes, max_message_bytes, max_buffer_bytes: as
            :func:`~llmbrick_grpc.create_servicer`.

    Returns:
        The health servicer (``grpc_health.v1.health.aio.HealthServicer``) or ``None``.
    """
    register_servicer(
        server,
        _FLOW_DESCRIPTOR,
        create_servicer(
            runtime,
            max_batch=max_batch,
            max_batch_bytes=max_batch_bytes,
            max_message_bytes=max_message_bytes,
            max_buffer_bytes=max_buffer_bytes,
        ),
    )
    register_servicer(
        server,
        _BRICK_DESCRIPTOR,
        create_brick_servicer(
            bricks if bricks is not None else {},
            max_batch=max_batch,
            debug=runtime.debug,
            logger=runtime.logger,
            max_message_bytes=max_message_bytes,
        ),
    )
    names = [FLOW_SERVICE, BRICK_SERVICE]
    servicer = None
    if health_checks:
        servicer = health.aio.HealthServicer()
        for name in ("", *names):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    if reflection_service:
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return servicer


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class GrpcServer:
    """Serve flows over gRPC (``llmbrick.v1.FlowService``) and bricks (``BrickService``).

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime (see
            :func:`llmbrick.as_runtime`). A Brick is also served on ``BrickService``.
        bricks: more bricks to serve on ``BrickService``.
        health_checks: serve ``grpc.health.v1.Health``.
        reflection_service: serve server reflection.
        max_message_bytes, max_concurrent_streams, keepalive_time, keepalive_timeout,
        max_pending_calls, max_pending_time: see :func:`server_options`.
        max_concurrent_rpcs: calls in progress at once before new ones get
            RESOURCE_EXHAUSTED from gRPC itself, health checks included and without
            a retry delay (``None``: no limit; the runtime's ``max_streams`` is the
            usual limit, and says when to retry).
        max_batch: events one response may carry.
        max_buffer_bytes: event bytes kept per stream for a slow client; the flow
            waits beyond.
        credentials: TLS credentials (``grpc.ssl_server_credentials``); ``None`` serves plaintext.
        options: more channel arguments; one with the key of a default replaces it.
    """

    def __init__(
        self,
        target: object = None,
        *,
        bricks: Iterable[Brick[Any, Any]] = (),
        health_checks: bool = True,
        reflection_service: bool = True,
        max_message_bytes: int = 4 << 20,
        max_concurrent_streams: int = 1024,
        keepalive_time: float = 30.0,
        keepalive_timeout: float = 10.0,
        max_pending_calls: int | None = None,
        max_pending_time: float = 3600.0,
        max_concurrent_rpcs: int | None = None,
        max_batch: int = 64,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        credentials: grpc.ServerCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.runtime = self._runtime_for(target)
        self._owns_runtime = not isinstance(target, FlowRuntime)
        self.bricks: dict[str, Brick[Any, Any]] = {}
        if isinstance(target, Brick):
            self.add_brick(target)
        for brick in bricks:
            self.add_brick(brick)
        self.health_checks = health_checks
        self.reflection_service = reflection_service
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.max_batch = max_batch
        self.max_buffer_bytes = max_buffer_bytes
        self.max_message_bytes = max_message_bytes
        self.credentials = credentials
        self.options: list[tuple[str, Any]] = merge_options(
            server_options(
                max_message_bytes=max_message_bytes,
                max_concurrent_streams=max_concurrent_streams,
                keepalive_time=keepalive_time,
                keepalive_timeout=keepalive_timeout,
                max_pending_calls=max_pending_calls,
                max_pending_time=max_pending_time,
            ),
            options,
        )
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._port: int | None = None

    @staticmethod
    def _runtime_for(target: object) -> FlowRuntime:
        try:
            return as_runtime(target)
        except TypeError:
            if isinstance(target, Brick):
                # A brick that cannot take a chat request is served on BrickService only.
                return FlowRuntime()
            raise

    @property
    def port(self) -> int:
        """The bound port (the real one when started with ``port=0``).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._port is None:
            raise RuntimeError("the gRPC server is not started")
        return self._port

    @property
    def server(self) -> grpc.aio.Server | None:
        """The underlying ``grpc.aio.Server`` while started."""
        return self._server

    def flow(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Register a flow on this server's registry (see ``FlowRegistry.flow``)."""
        return self.runtime.registry.flow(name, **options)

    def add_brick(self, brick: Brick[Any, Any]) -> None:
        """Serve ``brick`` on ``BrickService`` under its name.

        Raises:
            ValueError: a brick with that name is already served.
        """
        if brick.name in self.bricks:
            raise ValueError(f"a brick named {brick.name!r} is already served")
        self.bricks[brick.name] = brick

    async def start(self, host: str = "127.0.0.1", port: int = 50051) -> int:
        """Bind and start serving; returns the bound port (useful with ``port=0``).

        Raises:
            RuntimeError: already started, or the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the gRPC server is already started")
        server = grpc.aio.server(
            options=self.options, maximum_concurrent_rpcs=self.max_concurrent_rpcs
        )
        self._health = await add_services(
            server,
            self.runtime,
            bricks=self.bricks,
            health_checks=self.health_checks,
            reflection_service=self.reflection_service,
            max_batch=self.max_batch,
            max_batch_bytes=self.max_message_bytes // 2,
            max_message_bytes=self.max_message_bytes,
            max_buffer_bytes=self.max_buffer_bytes,
        )
        address = _address(host, port)
        try:
            if self.credentials is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, self.credentials)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind {address}: {exc}") from None
        if not bound:
            raise RuntimeError(f"cannot bind {address}")
        await server.start()
        self._server = server
        self._port = bound
        _log.info("gRPC server listening on %s", _address(host, bound))
        return bound

    async def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING on the health service, so balancers stop sending calls.

        The gateway calls it when it starts draining; :meth:`stop` calls it too.
        """
        if self._health is not None:
            await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop gracefully: report NOT_SERVING, let streams finish for ``grace`` seconds.

        With a runtime of its own, the server refuses new streams with
        UNAVAILABLE at once and ends streams still running after ``grace`` with
        an UNAVAILABLE error event before closing. With a shared runtime, gRPC's
        own stop applies: after ``grace`` the remaining calls are cancelled.
        """
        server = self._server
        if server is None:
            return
        await self.enter_graceful_shutdown()
        wait = grace
        if self._owns_runtime:
            if not await self.runtime.drain(grace or 0.0):
                self.runtime.stop_streams()
            wait = 1.0  # long enough to deliver the UNAVAILABLE events just produced
        try:
            await server.stop(wait)
        finally:
            self._server = None
            self._port = None
            if self._owns_runtime:
                await self.runtime.aclose()

    async def wait_for_termination(self) -> None:
        """Wait until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def serve(self, host: str = "127.0.0.1", port: int = 50051, grace: float = 5.0) -> None:
        """Start, serve until SIGINT/SIGTERM (or cancellation), then stop with ``grace``."""
        await self.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or a platform without signal support
        try:
            await stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self.stop(grace)

    def run(self, host: str = "127.0.0.1", port: int = 50051, *, grace: float = 5.0) -> None:
        """Serve until interrupted (blocking; starts its own event loop)."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        settle_heap()
        asyncio.run(self.serve(host, port, grace))
