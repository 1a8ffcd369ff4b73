"""Prometheus metrics for llmbrick: a runtime observer, a ``/metrics`` route and a metrics port.

:class:`PrometheusObserver` counts what the runtime's observer hooks report,
whichever adapter served the stream. Every hook is O(1) and runs once per
stream (or per rejection, or per brick run): the observer does not override
the per-event hook, so a stream's events are added to ``llmbrick_events_total``
in one step when it ends, and the per-event path of the runtime is untouched.

Serving uses prometheus-client's own exposition (``generate_latest`` and
``CONTENT_TYPE_LATEST``): :func:`create_metrics_router` on the HTTP port of an
app that has one, :func:`serve_metrics` on a port of its own (gRPC-only
deployments, or to keep metrics off the public port).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._extras import missing_extra

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        GCCollector,
        Histogram,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
    )
except ImportError as exc:
    raise missing_extra("llmbrick_telemetry's metrics", "metrics", exc.name) from exc

from llmbrick import ErrorCode, FlowRuntime, LLMBrickError, RequestContext, RuntimeObserver
from llmbrick.observe import StreamResult
from llmbrick.stream import FlowStream

if TYPE_CHECKING:
    from types import TracebackType

    from litestar import Router

__all__ = [
    "BRICK_BUCKETS",
    "DURATION_BUCKETS",
    "FIRST_EVENT_BUCKETS",
    "MetricsServer",
    "PrometheusObserver",
    "create_metrics_router",
    "serve_metrics",
]

#: Seconds to a stream's first event: a cached answer takes milliseconds, a model's
#: first token under load can take a minute.
FIRST_EVENT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Seconds a stream runs: a rejected guard ends in milliseconds, a long generation or an
#: agent loop runs for minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
#: Seconds one brick run takes: a keyword guard's microseconds to an LLM's minutes.
BRICK_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

# The outcome and code labels take these values only: a flow may yield an error event
# with any code string, and a label value a flow can invent would be unbounded.
_CODES = frozenset(code.value for code in ErrorCode)
_OTHER_CODE = "UNKNOWN"
# Refusals that say the caller's credentials were missing, wrong or not enough.
_AUTH_CODES = frozenset({ErrorCode.UNAUTHENTICATED.value, ErrorCode.PERMISSION_DENIED.value})


def _bounded(code: str) -> str:
    return code if code == "ok" or code in _CODES else _OTHER_CODE


class _Series:
    """The metric children of one (transport, flow): looked up once, then used directly.

    ``Metric.labels()`` validates and locks on every call; keeping the children
    makes each hook a dict lookup plus the updates themselves.
    """

    __slots__ = ("_labels", "_outcomes", "_streams", "active", "duration", "events", "first")

    def __init__(self, observer: PrometheusObserver, transport: str, flow: str) -> None:
        self._labels = (transport, flow)
        self._streams = observer._streams_total
        self._outcomes: dict[str, Counter] = {}
        self.active = observer._active.labels(transport, flow)
        self.first = observer._first_event.labels(transport, flow)
        self.duration = observer._duration.labels(transport, flow)
        self.events = observer._events.labels(transport, flow)

    def ended(self, outcome: str) -> Counter:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._streams.labels(*self._labels, outcome)
        return child


class PrometheusObserver(RuntimeObserver):
    """Counts streams, rejections and brick runs into a Prometheus registry.

    Metrics (labels in braces; every label takes a bounded set of values: flow
    names from the registry, since a stream only starts for a registered flow;
    the adapters' fixed transport names; error codes; the pipelines' brick names):

    - ``llmbrick_streams_total{transport,flow,outcome}``: streams ended;
      ``outcome`` is ``ok`` or the error code (``CANCELLED``: the client went away).
    - ``llmbrick_active_streams{transport,flow}``: streams running now.
    - ``llmbrick_time_to_first_event_seconds{transport,flow}``: histogram.
    - ``llmbrick_stream_duration_seconds{transport,flow}``: histogram.
    - ``llmbrick_events_total{transport,flow}``: events delivered, terminal ones
      included, added when each stream ends.
    - ``llmbrick_rejected_total{transport,code}``: requests refused before a
      stream started (no flow label: the flow may not exist).
    - ``llmbrick_auth_failures_total{transport}``: the refusals among those that
      came from authentication (see :meth:`rejected`).
    - ``llmbrick_brick_duration_seconds{flow,brick}``: one observation per brick
      run (a streaming brick: its whole stream; a brick after it: once per item).

    Args:
        registry: where the metrics go. The default is a new
            ``CollectorRegistry`` (with the process, platform and GC collectors,
            unless ``process_metrics`` is false), not the global one, so that
            several observers (tests, several runtimes) never clash; pass
            ``prometheus_client.REGISTRY`` to export next to other libraries'
            metrics (one observer per registry).
        runtime: add this observer to that runtime at once.
        process_metrics: add the standard ``process_*``, ``python_info`` and
            ``python_gc_*`` collectors to a registry this observer creates.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        runtime: FlowRuntime | None = None,
        process_metrics: bool = True,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            if process_metrics:
                ProcessCollector(registry=registry)
                PlatformCollector(registry=registry)
                GCCollector(registry=registry)
        self.registry = registry
        flow_labels = ("transport", "flow")
        self._streams_total = Counter(
            "llmbrick_streams_total",
            "Streams ended, by outcome: ok, or the error code (CANCELLED: the client went away).",
            (*flow_labels, "outcome"),
            registry=registry,
        )
        self._active = Gauge(
            "llmbrick_active_streams",
            "Streams running now.",
            flow_labels,
            registry=registry,
            # Summed over live processes when prometheus-client runs in multiprocess mode.
            multiprocess_mode="livesum",
        )
        self._first_event = Histogram(
            "llmbrick_time_to_first_event_seconds",
            "Seconds from a stream's start to its first event.",
            flow_labels,
            registry=registry,
            buckets=FIRST_EVENT_BUCKETS,
        )
        self._duration = Histogram(
            "llmbrick_stream_duration_seconds",
            "Seconds from a stream's start to its end.",
            flow_labels,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self._events = Counter(
            "llmbrick_events_total",
            "Events delivered to clients, terminal events included.",
            flow_labels,
            registry=registry,
        )
        self._rejected = Counter(
            "llmbrick_rejected_total",
            "Requests refused before a stream started, by error code.",
            ("transport", "code"),
            registry=registry,
        )
        self._auth_failures = Counter(
            "llmbrick_auth_failures_total",
            "Requests refused by authentication (UNAUTHENTICATED or PERMISSION_DENIED).",
            ("transport",),
            registry=registry,
        )
        self._bricks = Histogram(
            "llmbrick_brick_duration_seconds",
            "Seconds one run of a pipeline brick took.",
            ("flow", "brick"),
            registry=registry,
            buckets=BRICK_BUCKETS,
        )
        self._series: dict[tuple[str, str], _Series] = {}
        # Streams this observer saw start: one added to a runtime mid-stream ignores the
        # end of a stream it never saw begin (the gauge would go below zero).
        self._open: dict[str, _Series] = {}
        self._rejections: dict[tuple[str, str], tuple[Counter, Counter | None]] = {}
        self._brick_children: dict[tuple[str, str], Histogram] = {}
        if runtime is not None:
            runtime.add_observer(self)

    def _flow_series(self, transport: str, flow: str) -> _Series:
        key = (transport, flow)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self, transport, flow)
        return series

    def rejected(self, context: RequestContext, error: LLMBrickError) -> None:
        """Count a refusal; an auth failure too when authentication refused it.

        The authenticator raises ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``
        before a principal is recorded; a flow's ``allow`` list refuses an
        authenticated caller (one with a principal), which is authorisation,
        not an authentication failure, and counts only in ``rejected``.
        """
        transport = context.transport
        code = _bounded(error.code.value)
        key = (transport, code)
        children = self._rejections.get(key)
        if children is None:
            auth = self._auth_failures.labels(transport) if code in _AUTH_CODES else None
            children = self._rejections[key] = (self._rejected.labels(transport, code), auth)
        refused, auth_failed = children
        refused.inc()
        if auth_failed is not None and context.principal is None:
            auth_failed.inc()

    def stream_started(self, stream: FlowStream) -> None:
        """One more stream running for its transport and flow."""
        series = self._flow_series(stream.transport, stream.flow)
        series.active.inc()
        self._open[stream.id] = series

    def first_event(self, stream: FlowStream, seconds: float) -> None:
        """Observe the time to the first event as soon as it is known."""
        series = self._open.get(stream.id)
        if series is not None:
            series.first.observe(seconds)

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        """Count the stream by outcome, with its duration and its events."""
        series = self._open.pop(stream.id, None)
        if series is None:
            return
        series.active.dec()
        series.ended(_bounded(result.outcome)).inc()
        series.duration.observe(result.duration)
        series.events.inc(result.events)

    def brick_ended(
        self,
        stream: FlowStream,
        brick: Any,
        token: Any,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """Observe one brick run, whatever its end (a cancelled LLM brick counts too)."""
        key = (stream.flow, str(brick.name))
        child = self._brick_children.get(key)
        if child is None:
            child = self._brick_children[key] = self._bricks.labels(*key)
        child.observe(seconds)


def create_metrics_router(registry: CollectorRegistry, path: str = "/metrics") -> Router:
    """A Litestar router answering ``GET {path}`` with the registry in Prometheus text format.

    Add it to the routers of an llmbrick HTTP app
    (``llmbrick_http.build_app([*routers, create_metrics_router(registry)], settings)``).
    The route asks for no credentials, like every Prometheus target: serve it
    on a port the internet cannot reach, or use :func:`serve_metrics`.

    Raises:
        ImportError: Litestar is missing (it comes with the ``sse`` extra).
    """
    try:
        from litestar import Response, Router, get
    except ImportError as exc:
        raise missing_extra("create_metrics_router", "sse", exc.name) from exc

    async def metrics() -> Response[bytes]:
        # Collecting is a walk over in-memory values: cheap enough for the event loop.
        # The header is given as is: from media_type alone, Litestar would append a second
        # "; charset=utf-8" to a text/ type that already names its charset.
        return Response(
            generate_latest(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    handler = get(
        path,
        name="llmbrick-metrics",
        cache=False,
        include_in_schema=False,
        # Litestar reads the annotation, a string here: say what the name means.
        signature_namespace={"Response": Response},
    )(metrics)
    return Router(path="/", route_handlers=[handler])


# A scrape request is one line and a few headers; anything bigger or slower is not Prometheus.
_MAX_HEAD = 16 << 10
_READ_TIMEOUT = 10.0


class MetricsServer:
    """A minimal HTTP/1.1 server on the event loop answering ``GET {path}`` with the metrics.

    Why not prometheus-client's ``start_http_server``: it serves from a thread
    whose ``shutdown`` waits up to half a second for its poll loop, and whose
    ``server_close`` waits for every request thread, so an idle connection held
    open by anyone stops the process from shutting down. This one lives on the
    loop the gateway already runs: each connection is a task that reads one
    request (with a size bound and a timeout), answers it with
    ``generate_latest`` and closes; :meth:`aclose` ends every connection at once
    and leaves no thread behind. The exposition itself is prometheus-client's.

    Start it with :func:`serve_metrics`.

    Attributes:
        host, port: where it listens (the real port when asked for port 0).
        path: the path answered (others get 404).
    """

    def __init__(self, registry: CollectorRegistry, *, path: str = "/metrics") -> None:
        if not path.startswith("/"):
            raise ValueError(f"the metrics path must start with '/', got {path!r}")
        self.path = path
        self.host = ""
        self.port = 0
        self._registry = registry
        self._target = path.encode("latin-1")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """The metrics URL, to print at start-up or scrape in tests."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port).

        Raises:
            OSError: the address cannot be bound (in use, not local, ...).
        """
        if self._server is not None:
            raise RuntimeError("this metrics server is already started")
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEAD)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def aclose(self) -> None:
        """Stop listening and end every open connection; returns once all are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await server.wait_closed()
        if connections:
            await asyncio.wait(connections)

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self._answer(head))
                await writer.drain()
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # too big, cut short, too slow or gone: close without an answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(b"400 Bad Request", b"not an HTTP/1.x request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != self._target:
            return _response(b"404 Not Found", b"metrics are at " + self._target + b"\n")
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"use GET\n", ((b"Allow", b"GET, HEAD"),))
        body = generate_latest(self._registry)
        content_type = CONTENT_TYPE_LATEST.encode("latin-1")
        return _response(b"200 OK", body, content_type=content_type, head=method == b"HEAD")


def _response(
    status: bytes,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    head: bool = False,
) -> bytes:
    lines = [
        b"HTTP/1.1 " + status,
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, *, path: str = "/metrics"
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port{path}`` from this event loop (``--metrics-port``).

    For deployments without an HTTP port (gRPC only), or to keep metrics off the
    public one. Close it with ``await server.aclose()`` (or ``async with``).

    Raises:
        OSError: the address cannot be bound.
    """
    server = MetricsServer(registry, path=path)
    await server.start(host, port)
    return server
