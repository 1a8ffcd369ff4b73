"""``install``: metrics and tracing on a runtime in one call, for the gateway and for apps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmbrick import FlowRuntime

if TYPE_CHECKING:
    from litestar import Router
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from .metrics import MetricsServer, PrometheusObserver
    from .tracing import TracingObserver

__all__ = ["Telemetry", "install"]


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What :func:`install` added to a runtime, and the ways to serve its metrics.

    Attributes:
        runtime: the runtime observed.
        metrics: the Prometheus observer (``None`` without metrics).
        tracing: the OpenTelemetry observer (``None`` without tracing).
    """

    runtime: FlowRuntime
    metrics: PrometheusObserver | None = None
    tracing: TracingObserver | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """The metrics' registry.

        Raises:
            RuntimeError: metrics were not installed.
        """
        return self._metrics().registry

    def router(self, path: str = "/metrics") -> Router:
        """The Litestar route serving the metrics, for the HTTP app (``--metrics``)."""
        from .metrics import create_metrics_router

        return create_metrics_router(self.registry, path)

    async def serve(self, host: str, port: int, *, path: str = "/metrics") -> MetricsServer:
        """Serve the metrics on a port of their own (``--metrics-port``); ``aclose`` it at exit."""
        from .metrics import serve_metrics

        return await serve_metrics(self.registry, host, port, path=path)

    def _metrics(self) -> PrometheusObserver:
        if self.metrics is None:
            raise RuntimeError("metrics are not installed: install(runtime, metrics=True)")
        return self.metrics


def install(
    runtime: FlowRuntime,
    *,
    metrics: bool = True,
    tracing: bool = False,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Telemetry:
    """Add the metrics and/or tracing observers to ``runtime``.

    Args:
        runtime: the runtime every adapter shares (a gateway's, a server's ``.runtime``).
        metrics: count streams into Prometheus metrics (the ``metrics`` extra).
        tracing: trace streams and bricks with OpenTelemetry (the ``otel`` extra).
        registry: the metrics' registry; default: a new one (see
            :class:`~llmbrick_telemetry.PrometheusObserver`).
        tracer_provider: where spans go; default: the global provider.

    Raises:
        ImportError: naming the extra to install when one asked for is missing.

    Example::

        telemetry = install(runtime, metrics=True, tracing=True)
        routers.append(telemetry.router())                  # GET /metrics on the HTTP port
        server = await telemetry.serve("0.0.0.0", 9464)     # or a port of its own
    """
    prometheus = None
    tracer = None
    # Import both before adding either, so a missing extra leaves the runtime untouched.
    if metrics:
        from .metrics import PrometheusObserver
    if tracing:
        from .tracing import TracingObserver
    if metrics:
        prometheus = PrometheusObserver(registry, runtime=runtime)
    if tracing:
        tracer = TracingObserver(tracer_provider, runtime=runtime)
    return Telemetry(runtime, prometheus, tracer)
