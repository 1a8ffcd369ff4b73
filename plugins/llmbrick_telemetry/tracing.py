"""OpenTelemetry tracing for llmbrick: a span per stream, a child span per brick run.

:class:`TracingObserver` opens the stream's span when the runtime starts the
flow and makes it the current span of the task that runs the flow, so that
spans the flow opens itself (an instrumented HTTP client calling a model, say)
nest under it. Brick spans nest the same way: a streaming brick's span is
current while it streams, so the spans of the bricks that run once per item
after it are its children.

The trace continues the client's: W3C ``traceparent``/``tracestate`` (or
whatever the configured propagator reads) from the request's HTTP headers or
gRPC metadata, through OpenTelemetry's propagator API. When the task already
has a current span (an ASGI or gRPC server instrumentation made one from the
same headers, or code calling ``FlowRuntime.run`` inside its own span), the
stream's span is a child of that one instead.

Spans carry ids and names only: flow, transport, stream id, request id,
principal id, outcome, event count. Never a header, a key, the request or an
exception's message (which may quote the prompt).
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Any

from ._extras import missing_extra

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:
    raise missing_extra("llmbrick_telemetry's tracing", "otel", exc.name) from exc

from llmbrick import FlowRuntime, LLMBrickError, RuntimeObserver
from llmbrick.observe import StreamResult
from llmbrick.stream import FlowStream

__all__ = ["NOT_ERRORS", "TracingObserver"]

#: Outcomes that leave a stream span's status unset (every other outcome is ERROR).
#: ``CANCELLED`` is the client going away or cancelling: nothing failed on the server.
NOT_ERRORS = frozenset({"ok", "CANCELLED"})

_TRACER_NAME = "llmbrick"


def _version() -> str | None:
    try:
        return metadata.version("llmbrick")
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        return None


def _task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a hook called from synchronous code
        return None


class _Scope:
    """A span made current in the running task, and how to put the previous context back."""

    __slots__ = ("previous", "span", "task", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.previous = otel_context.get_current()
        self.token = otel_context.attach(trace.set_span_in_context(span, self.previous))
        self.task = _task()

    def leave(self) -> None:
        if _task() is self.task:
            otel_context.detach(self.token)
        else:
            # An adapter handed the stream to another task mid-way (reading ahead for a
            # slow client). The token belongs to the first task's context and cannot be
            # reset from here; this task's context is a copy of it taken when the task
            # was made, so setting the previous context back does what resetting would.
            otel_context.attach(self.previous)


class TracingObserver(RuntimeObserver):
    """Traces streams and pipeline bricks with OpenTelemetry.

    The stream span is named ``llmbrick.stream <flow>`` (kind ``SERVER`` when it
    continues a remote parent or starts a trace, ``INTERNAL`` under a current
    span) with the attributes ``llmbrick.flow``, ``llmbrick.transport``,
    ``llmbrick.stream_id``, ``llmbrick.request_id``, ``llmbrick.principal`` (when
    authenticated), and at its end ``llmbrick.outcome``, ``llmbrick.events`` and
    ``llmbrick.time_to_first_event_ms``; a ``first event`` span event marks the
    first event. Its status is ERROR (described by the error code) for every
    outcome except those in :data:`NOT_ERRORS`: a client that disconnects or
    cancels (``CANCELLED``) is not a failure of the server.

    Each brick run is a span ``llmbrick.brick <name>`` with ``llmbrick.brick.name``,
    ``llmbrick.brick.kind`` and ``llmbrick.brick.mode``; a brick that raised gets
    status ERROR and ``llmbrick.error_code`` (an ``LLMBrickError``) or
    ``exception.type``, without the message; a brick cancelled with its stream
    gets ``llmbrick.brick.cancelled`` and no error.

    Args:
        tracer_provider: where spans go; default: the global provider
            (``opentelemetry.trace.set_tracer_provider``, or the one
            ``opentelemetry-instrument`` configures).
        propagator: reads the trace context from headers and metadata; default:
            the global one at each stream (W3C trace context and baggage unless
            ``OTEL_PROPAGATORS`` or ``propagate.set_global_textmap`` say otherwise).
        runtime: add this observer to that runtime at once.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        runtime: FlowRuntime | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_TRACER_NAME, _version(), tracer_provider)
        self._propagator = propagator
        self._scopes: dict[str, _Scope] = {}
        if runtime is not None:
            runtime.add_observer(self)

    def stream_started(self, stream: FlowStream) -> None:
        """Open the stream's span, continuing the caller's trace, and make it current."""
        context = stream.context
        current = otel_context.get_current()
        if trace.get_current_span(current).get_span_context().is_valid:
            parent, kind = current, SpanKind.INTERNAL
        else:
            propagator = self._propagator or propagate.get_global_textmap()
            parent, kind = propagator.extract(context.headers, context=current), SpanKind.SERVER
        flow = stream.flow
        attributes: dict[str, str] = {
            "llmbrick.flow": flow,
            "llmbrick.transport": context.transport,
            "llmbrick.stream_id": stream.id,
            "llmbrick.request_id": context.request_id,
        }
        if context.principal is not None:
            attributes["llmbrick.principal"] = context.principal.id
        span = self._tracer.start_span(
            f"llmbrick.stream {flow}", context=parent, kind=kind, attributes=attributes
        )
        self._scopes[stream.id] = _Scope(span)

    def first_event(self, stream: FlowStream, seconds: float) -> None:
        """Mark the first event on the stream's span."""
        scope = self._scopes.get(stream.id)
        if scope is not None:
            scope.span.add_event("first event")

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        """Record the outcome, end the span and put the task's previous context back."""
        scope = self._scopes.pop(stream.id, None)
        if scope is None:
            return  # started before this observer was added
        span = scope.span
        try:
            span.set_attribute("llmbrick.outcome", result.outcome)
            span.set_attribute("llmbrick.events", result.events)
            if result.first_event is not None:
                span.set_attribute(
                    "llmbrick.time_to_first_event_ms", round(result.first_event * 1000, 3)
                )
            if result.outcome not in NOT_ERRORS:
                span.set_status(Status(StatusCode.ERROR, result.outcome))
            span.end()
        finally:
            scope.leave()

    def brick_started(self, stream: FlowStream, brick: Any) -> Any:
        """Open a span for this brick run under the current span, and make it current."""
        attributes = {
            "llmbrick.brick.name": str(brick.name),
            "llmbrick.brick.kind": str(brick.kind),
            "llmbrick.brick.mode": str(brick.mode),
        }
        span = self._tracer.start_span(f"llmbrick.brick {brick.name}", attributes=attributes)
        return _Scope(span)

    def brick_ended(
        self,
        stream: FlowStream,
        brick: Any,
        token: Any,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """End the brick's span, with its error when it raised one."""
        if not isinstance(token, _Scope):
            return  # brick_started failed, or ran before this observer was added
        span = token.span
        try:
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                span.set_attribute("llmbrick.brick.cancelled", True)
            elif isinstance(error, LLMBrickError):
                span.set_attribute("llmbrick.error_code", error.code.value)
                span.set_status(Status(StatusCode.ERROR, error.code.value))
            elif error is not None:
                kind = type(error)
                span.set_attribute("exception.type", f"{kind.__module__}.{kind.__qualname__}")
                span.set_status(Status(StatusCode.ERROR, kind.__name__))
            span.end()
        finally:
            token.leave()
