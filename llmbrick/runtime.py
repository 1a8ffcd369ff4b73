"""``FlowRuntime``: runs flows for every transport, with one set of rules.

It validates the request, runs the flow inside ``contextlib.aclosing``, stamps
``id`` and ``progress`` on each event, guarantees exactly one terminal event,
turns exceptions into ``error`` events and enforces the limits (timeout,
concurrent streams). One consumer drives a stream; adapters bring any
concurrency (pings, disconnect listeners) themselves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from functools import partial
from typing import Any, TypedDict

from pydantic import BaseModel, ValidationError

from .auth import Authenticator, CallerLimits
from .context import Principal, RequestContext, _bind, new_id
from .errors import (
    DeadlineExceeded,
    ErrorCode,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .events import ErrorInfo, Event, event_problem
from .observe import RuntimeObserver, StreamResult, _Observers
from .registry import FlowRegistry, FlowSpec

__all__ = ["FAIR_SLICE", "FlowRuntime", "FlowStream", "InvokeResult", "collect_events"]


class InvokeResult(TypedDict):
    """A whole stream at once: every event, the text joined, and the error if it failed."""

    events: list[Event]
    text: str
    error: ErrorInfo | None


def collect_events(events: list[Event]) -> InvokeResult:
    """A finished stream's events as an :class:`InvokeResult`; every client's ``invoke`` uses it."""
    text = "".join(event.get("text", "") for event in events if event["type"] == "text")
    last = events[-1] if events else None
    error = last.get("error") if last is not None and last["type"] == "error" else None
    return {"events": events, "text": text, "error": error}


class _Stopped(Exception):
    """Raised inside a stream that the runtime stops during shutdown."""


#: Events a stream may produce without the loop turning before the runtime makes it turn.
#: A flow that never awaits (a tokenizer loop, cached chunks) would otherwise hold the loop
#: for its whole run: no other stream, health check or disconnect would be served.
FAIR_SLICE = 32


class FlowRuntime:
    """Runs registered flows; build one and hand the same object to every adapter.

    Args:
        registry: the flows; a new empty registry if omitted.
        timeout: default seconds a stream may run (``None``: no limit); a flow's
            own ``timeout`` wins.
        max_streams: streams allowed at once (``None``: no limit); more are
            rejected with ``RESOURCE_EXHAUSTED``.
        debug: send internal exception text to clients (never in production).
        logger: where stream start/end lines and flow crashes go.
        authenticator: ``async (RequestContext) -> Principal``, applied before any
            flow starts on every transport (see :mod:`llmbrick.auth`).
        caller_limits: per-caller stream cap and rate (see :class:`~llmbrick.auth.CallerLimits`).
        observers: hooks for metrics, tracing and audit (see :mod:`llmbrick.observe`).
    """

    def __init__(
        self,
        registry: FlowRegistry | None = None,
        *,
        timeout: float | None = None,
        max_streams: int | None = None,
        debug: bool = False,
        logger: logging.Logger | None = None,
        authenticator: Authenticator | None = None,
        caller_limits: CallerLimits | None = None,
        observers: Iterable[RuntimeObserver] = (),
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams!r}")
        self.registry = registry if registry is not None else FlowRegistry()
        self.timeout = timeout
        self.max_streams = max_streams
        self.debug = debug
        self.logger = logger or logging.getLogger("llmbrick")
        self.authenticator = authenticator
        self.caller_limits = caller_limits
        self._observers = _Observers()
        for observer in observers:
            self._observers.add(observer)
        self._streams: set[FlowStream] = set()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_streams(self) -> int:
        """Streams started and not yet finished."""
        return len(self._streams)

    @property
    def draining(self) -> bool:
        """True once :meth:`shutdown` was called: new streams are refused."""
        return self._draining

    @property
    def observers(self) -> tuple[RuntimeObserver, ...]:
        """The observers added so far."""
        return self._observers.all

    def add_observer(self, observer: RuntimeObserver) -> None:
        """Add an observer; it sees streams started from now on."""
        self._observers.add(observer)

    def flow_name(self, name: str | None, payload: object) -> str:
        """The flow to run: ``name``, else the payload's ``flow`` field, else ``default``."""
        if name is not None:
            return name
        if isinstance(payload, Mapping):
            value = payload.get("flow", "default")
            if not isinstance(value, str):
                raise InvalidRequest(
                    "invalid request: flow: must be a string",
                    details=[{"loc": "flow", "message": "must be a string", "type": "string_type"}],
                )
            return value
        return str(getattr(payload, "flow", "default"))

    def validate(self, spec: FlowSpec, payload: object) -> BaseModel:
        """Validate ``payload`` against the flow's request model.

        Raises:
            InvalidRequest: with each problem's field path in ``details``.
        """
        model = spec.request_model
        if isinstance(payload, model):
            return payload
        if isinstance(payload, Mapping) and "flow" in payload and "flow" not in model.model_fields:
            payload = {key: value for key, value in payload.items() if key != "flow"}
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest.from_validation_error(exc) from None

    async def authenticate(self, context: RequestContext) -> Principal | None:
        """Run the authenticator on ``context`` (once) and record the principal.

        Returns:
            The principal, or ``None`` when no authenticator is configured.

        Raises:
            Unauthenticated, PermissionDenied: from the authenticator.
        """
        if self.authenticator is None or context.principal is not None:
            return context.principal
        try:
            principal = await self.authenticator(context)
        except LLMBrickError as exc:
            self._observers.call(self._observers.all, "rejected", context, exc)
            raise
        if not isinstance(principal, Principal):
            raise TypeError(f"the authenticator returned {principal!r}, not a Principal")
        context.principal = principal
        return principal

    def start(
        self,
        name: str | None,
        payload: object,
        *,
        transport: str = "python",
        context: RequestContext | None = None,
    ) -> FlowStream:
        """Check and reserve a stream; iterate the result (inside ``aclosing``) for its events.

        With an authenticator configured, ``context`` must have been through
        :meth:`authenticate` (or use :meth:`open`, which does both).

        Raises:
            FlowNotFound, InvalidRequest, Overloaded, Unavailable, Unauthenticated,
            PermissionDenied: before anything is streamed, so adapters can answer
            with a status instead of a stream.
        """
        if context is None:
            context = RequestContext(transport)
        try:
            return self._start(name, payload, context)
        except LLMBrickError as exc:
            self._observers.call(self._observers.all, "rejected", context, exc)
            raise

    def _start(self, name: str | None, payload: object, context: RequestContext) -> FlowStream:
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another instance")
        if self.authenticator is not None and context.principal is None:
            raise Unauthenticated("the request is not authenticated")
        spec = self.registry.get(self.flow_name(name, payload))
        if spec.allow is not None and (
            context.principal is None or not context.principal.allowed(spec.allow)
        ):
            raise PermissionDenied(f"this caller may not run flow {spec.name!r}")
        if (
            isinstance(payload, Mapping)
            and payload.get("flow") != spec.name
            and "flow" in spec.request_model.model_fields
        ):
            # The request names the flow it runs in, however the name was given.
            payload = {**payload, "flow": spec.name}
        request = self.validate(spec, payload)
        if self.max_streams is not None and len(self._streams) >= self.max_streams:
            raise Overloaded(f"the server runs its maximum of {self.max_streams} streams")
        caller = None
        if self.caller_limits is not None:
            caller = context.caller
            self.caller_limits.acquire(caller)
        context.flow = spec.name
        stream = FlowStream(self, spec, request, context, caller)
        self._streams.add(stream)
        self._idle.clear()
        return stream

    async def open(
        self, name: str | None, payload: object, *, context: RequestContext
    ) -> FlowStream:
        """:meth:`authenticate` then :meth:`start`: what an adapter calls per request."""
        await self.authenticate(context)
        return self.start(name, payload, context=context)

    async def run(
        self,
        name: str | None,
        payload: object,
        *,
        transport: str = "python",
        context: RequestContext | None = None,
    ) -> AsyncIterator[Event]:
        """Stream a flow's events; errors before the start become the one terminal event."""
        if context is None:
            context = RequestContext(transport)
        try:
            stream = await self.open(name, payload, context=context)
        except LLMBrickError as exc:
            yield {"type": "error", "error": exc.to_info(), "id": "1", "progress": "ERROR"}
            return
        async with aclosing(stream):
            async for event in stream:
                yield event

    async def invoke(
        self,
        name: str | None,
        payload: object,
        *,
        transport: str = "python",
        context: RequestContext | None = None,
    ) -> InvokeResult:
        """Run a flow to its end and return everything at once.

        Raises:
            LLMBrickError: when the stream cannot start (as :meth:`start`).
        """
        if context is None:
            context = RequestContext(transport)
        return await (await self.open(name, payload, context=context)).collect()

    def shutdown(self) -> None:
        """Refuse new streams from now on; running ones go on."""
        self._draining = True

    async def drain(self, grace: float) -> bool:
        """Refuse new streams and wait up to ``grace`` seconds for running ones.

        Returns:
            True if every stream finished in time.
        """
        self.shutdown()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def stop_streams(self) -> int:
        """End every running stream with an ``UNAVAILABLE`` error event; returns how many."""
        streams = list(self._streams)
        for stream in streams:
            stream._stop()
        return len(streams)

    async def aclose(self) -> None:
        """Close the bricks of every registered pipeline (their ``aclose``)."""
        for spec in self.registry:
            close = getattr(spec.source, "aclose", None)
            if close is not None and not isinstance(spec.source, type):
                await close()

    def _release(self, stream: FlowStream) -> None:
        self._streams.discard(stream)
        if stream._caller is not None and self.caller_limits is not None:
            self.caller_limits.release(stream._caller)
        if not self._streams:
            self._idle.set()


class FlowStream:
    """One running flow; an async iterator of stamped events. Close it with ``aclose``.

    Attributes:
        id: the stream id: random, unique across instances and restarts.
        spec: the flow being run.
        request: the validated request.
        context: who asked, over which transport (see :class:`RequestContext`).
    """

    __slots__ = (
        "_caller",
        "_events",
        "_released",
        "_runtime",
        "_stopping",
        "_waiting",
        "context",
        "id",
        "request",
        "spec",
    )

    def __init__(
        self,
        runtime: FlowRuntime,
        spec: FlowSpec,
        request: BaseModel,
        context: RequestContext,
        caller: str | None,
    ) -> None:
        self._runtime = runtime
        self.spec = spec
        self.request = request
        self.context = context
        self.id = context.stream_id = new_id()
        context._stream = self
        self._caller = caller
        self._released = False
        self._stopping = False
        # The task blocked on the flow right now, if any: the one _stop() must interrupt.
        self._waiting: asyncio.Task[Any] | None = None
        self._events = self._iterate()

    @property
    def transport(self) -> str:
        """The transport the stream was requested over."""
        return self.context.transport

    @property
    def flow(self) -> str:
        """The flow's name."""
        return self.spec.name

    def __aiter__(self) -> AsyncIterator[Event]:
        # The generator itself, so `async for` resumes it with no Python call per event.
        return self._events

    def __anext__(self) -> Any:
        return self._events.__anext__()

    async def collect(self) -> InvokeResult:
        """Run the stream to its end and return everything at once."""
        events: list[Event] = []
        async with aclosing(self):
            async for event in self:
                events.append(event)
        return collect_events(events)

    async def aclose(self) -> None:
        """Stop the flow (its ``finally`` blocks run) and free the stream's slot."""
        try:
            await self._events.aclose()
        finally:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._runtime._release(self)

    def _stopped_by_runtime(self) -> bool:
        # Absorb the cancel that _stop() sent, so the consumer's task goes on normally.
        task = asyncio.current_task()
        if self._stopping and task is not None:
            task.uncancel()
            return True
        return False

    def _stop(self) -> None:
        self._stopping = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _deadline(self, timeout: float | None) -> tuple[float | None, bool]:
        """The loop time the stream must end by, and whether the client set it."""
        now = asyncio.get_running_loop().time()
        deadline = None if timeout is None else now + timeout
        left = self.context.time_left()
        if left is not None and (deadline is None or now + left < deadline):
            return now + left, True
        return deadline, False

    async def _iterate(self) -> AsyncGenerator[Event]:
        runtime = self._runtime
        spec = self.spec
        context = self.context
        observers = runtime._observers
        per_event = observers.per_event
        log = runtime.logger
        started = time.monotonic()
        first: float | None = None
        timeout = spec.timeout if spec.timeout is not None else runtime.timeout
        deadline, client_deadline = self._deadline(timeout)
        current_task = _task_lookup()
        seq = 0
        turn = FAIR_SLICE
        outcome = ErrorCode.CANCELLED.value
        unbind = _bind(context)
        principal = context.principal.id if context.principal is not None else "-"
        fields = {
            "stream_id": self.id,
            "flow": spec.name,
            "transport": context.transport,
            "request_id": context.request_id,
            "principal": principal,
        }
        log.info(
            "stream start id=%s flow=%s transport=%s request_id=%s principal=%s",
            self.id,
            spec.name,
            context.transport,
            context.request_id,
            principal,
            extra={"llmbrick": fields},
        )
        if observers.all:
            observers.call(observers.all, "stream_started", self)
        try:
            try:
                flow = spec.handler(self.request)
                async with aclosing(flow):  # type: ignore[type-var]
                    next_event = flow.__anext__
                    while True:
                        if self._stopping:
                            raise _Stopped
                        turn -= 1
                        if not turn:
                            # Let the loop turn: other streams, health checks and the
                            # disconnect watchers run even if this flow never awaits.
                            turn = FAIR_SLICE
                            await asyncio.sleep(0)
                        # Adapters may hand the stream to another task mid-way (to read
                        # ahead while a slow client drains), so look the task up each time.
                        self._waiting = current_task()
                        try:
                            if deadline is None:
                                event = await next_event()
                            else:
                                event = await _next_before(next_event, deadline)
                        except StopAsyncIteration:
                            break
                        except asyncio.CancelledError:
                            if self._stopped_by_runtime():
                                raise _Stopped from None
                            raise
                        finally:
                            self._waiting = None
                        problem = event_problem(event)
                        if problem is not None:
                            raise LLMBrickError(f"flow {spec.name!r} misbehaved: {problem}")
                        seq += 1
                        if seq == 1:
                            first = time.monotonic() - started
                            if observers.all:
                                observers.call(observers.all, "first_event", self, first)
                        kind = event["type"]
                        if kind == "done" or kind == "error":
                            outcome = "ok" if kind == "done" else event["error"]["code"]
                            stamped: Event = {
                                **event,
                                "id": str(seq),
                                "progress": "DONE" if kind == "done" else "ERROR",
                            }
                            if per_event:
                                observers.call(per_event, "event", self, stamped)
                            yield stamped
                            return
                        stamped = {**event, "id": str(seq), "progress": "IN_PROGRESS"}
                        if per_event:
                            observers.call(per_event, "event", self, stamped)
                        yield stamped
            except _Stopped:
                error = Unavailable("the server is shutting down").to_info()
            except _Deadline:
                message = (
                    "the client's deadline passed"
                    if client_deadline
                    else f"flow {spec.name!r} ran past its {timeout:g} s timeout"
                )
                error = DeadlineExceeded(message).to_info()
            except LLMBrickError as exc:
                if exc.code is ErrorCode.INTERNAL and not runtime.debug:
                    log.error("stream %s flow=%s failed: %s", self.id, spec.name, exc.message)
                error = exc.to_info()
            except Exception as exc:
                log.exception("stream %s flow=%s crashed", self.id, spec.name)
                message = (
                    f"{type(exc).__name__}: {exc}"
                    if runtime.debug
                    else f"internal error in flow {spec.name!r} (stream {self.id}); see server log"
                )
                error = {"code": ErrorCode.INTERNAL.value, "message": message}
            else:
                outcome = "ok"
                seq += 1
                done: Event = {"type": "done", "id": str(seq), "progress": "DONE"}
                if per_event:
                    observers.call(per_event, "event", self, done)
                yield done
                return
            outcome = error["code"]
            seq += 1
            failed: Event = {"type": "error", "error": error, "id": str(seq), "progress": "ERROR"}
            if per_event:
                observers.call(per_event, "event", self, failed)
            yield failed
        finally:
            self._release()
            unbind()
            duration = time.monotonic() - started
            # A stream closed before its terminal event delivered `seq` events, not more.
            log.info(
                "stream end id=%s flow=%s transport=%s request_id=%s principal=%s "
                "outcome=%s events=%d duration_ms=%.1f",
                self.id,
                spec.name,
                context.transport,
                context.request_id,
                principal,
                outcome,
                seq,
                duration * 1000,
                extra={
                    "llmbrick": {
                        **fields,
                        "outcome": outcome,
                        "events": seq,
                        "duration_ms": round(duration * 1000, 1),
                    }
                },
            )
            if observers.all:
                observers.call(
                    observers.all, "stream_ended", self, StreamResult(outcome, seq, duration, first)
                )


def _task_lookup() -> Callable[[], asyncio.Task[Any] | None]:
    """A cheap ``asyncio.current_task`` for the per-event path.

    Before Python 3.12 ``current_task`` is written in Python and costs about a
    microsecond; the loop's entry in asyncio's task table is the same answer.
    """
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if sys.version_info >= (3, 12) or not isinstance(table, dict):
        return asyncio.current_task
    return partial(table.get, asyncio.get_running_loop())


class _Deadline(Exception):
    """The runtime's own timeout fired (a flow's own TimeoutError stays a crash)."""


async def _next_before(next_event: Any, deadline: float) -> Any:
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await next_event()
    except TimeoutError:
        if timeout.expired():
            raise _Deadline from None
        raise
