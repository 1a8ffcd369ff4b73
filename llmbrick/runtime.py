"""``FlowRuntime``: runs flows for every transport, with one set of rules.

It validates the request, runs the flow inside ``contextlib.aclosing``, stamps
``id`` and ``progress`` on each event, guarantees exactly one terminal event,
turns exceptions into ``error`` events and enforces the limits (timeout,
concurrent streams). One consumer drives a stream; adapters bring any
concurrency (pings, disconnect listeners) themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from functools import partial
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ValidationError

from .errors import (
    DeadlineExceeded,
    ErrorCode,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    Unavailable,
)
from .events import ErrorInfo, Event, event_problem
from .registry import FlowRegistry, FlowSpec

__all__ = ["FlowRuntime", "FlowStream", "InvokeResult", "Outcome", "collect_events"]

Outcome = Literal["done", "error", "cancelled"]


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
    """

    def __init__(
        self,
        registry: FlowRegistry | None = None,
        *,
        timeout: float | None = None,
        max_streams: int | None = None,
        debug: bool = False,
        logger: logging.Logger | None = None,
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
        self._streams: set[FlowStream] = set()
        self._ids = itertools.count(1)
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

    def start(self, name: str | None, payload: object, *, transport: str = "python") -> FlowStream:
        """Check and reserve a stream; iterate the result (inside ``aclosing``) for its events.

        Raises:
            FlowNotFound, InvalidRequest, Overloaded, Unavailable: before anything
            is streamed, so adapters can answer with a status instead of a stream.
        """
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another instance")
        spec = self.registry.get(self.flow_name(name, payload))
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
        stream = FlowStream(self, spec, request, transport, next(self._ids))
        self._streams.add(stream)
        self._idle.clear()
        return stream

    async def run(
        self, name: str | None, payload: object, *, transport: str = "python"
    ) -> AsyncIterator[Event]:
        """Stream a flow's events; errors before the start become the one terminal event."""
        try:
            stream = self.start(name, payload, transport=transport)
        except LLMBrickError as exc:
            yield {"type": "error", "error": exc.to_info(), "id": "1", "progress": "ERROR"}
            return
        async with aclosing(stream):
            async for event in stream:
                yield event

    async def invoke(
        self, name: str | None, payload: object, *, transport: str = "python"
    ) -> InvokeResult:
        """Run a flow to its end and return everything at once.

        Raises:
            LLMBrickError: when the stream cannot start (as :meth:`start`).
        """
        return await self.start(name, payload, transport=transport).collect()

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
        if not self._streams:
            self._idle.set()


class FlowStream:
    """One running flow; an async iterator of stamped events. Close it with ``aclose``."""

    __slots__ = (
        "_events",
        "_released",
        "_runtime",
        "_stopping",
        "_waiting",
        "id",
        "request",
        "spec",
        "transport",
    )

    def __init__(
        self, runtime: FlowRuntime, spec: FlowSpec, request: BaseModel, transport: str, number: int
    ) -> None:
        self._runtime = runtime
        self.spec = spec
        self.request = request
        self.transport = transport
        self.id = f"s{number}"
        self._released = False
        self._stopping = False
        # The task blocked on the flow right now, if any: the one _stop() must interrupt.
        self._waiting: asyncio.Task[Any] | None = None
        self._events = self._iterate()

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

    async def _iterate(self) -> AsyncGenerator[Event]:
        runtime = self._runtime
        spec = self.spec
        log = runtime.logger
        started = time.monotonic()
        timeout = spec.timeout if spec.timeout is not None else runtime.timeout
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        current_task = _task_lookup()
        seq = 0
        outcome: str = "cancelled"
        log.info("stream start id=%s flow=%s transport=%s", self.id, spec.name, self.transport)
        try:
            try:
                flow = spec.handler(self.request)
                async with aclosing(flow):  # type: ignore[type-var]
                    next_event = flow.__anext__
                    while True:
                        if self._stopping:
                            raise _Stopped
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
                        kind = event["type"]
                        if kind == "done" or kind == "error":
                            outcome = (
                                "done" if kind == "done" else f"error:{event['error']['code']}"
                            )
                            yield {
                                **event,
                                "id": str(seq),
                                "progress": "DONE" if kind == "done" else "ERROR",
                            }
                            return
                        yield {**event, "id": str(seq), "progress": "IN_PROGRESS"}
            except _Stopped:
                error = Unavailable("the server is shutting down").to_info()
            except _Deadline:
                error = DeadlineExceeded(
                    f"flow {spec.name!r} ran past its {timeout:g} s timeout"
                ).to_info()
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
                outcome = "done"
                yield {"type": "done", "id": str(seq + 1), "progress": "DONE"}
                return
            outcome = f"error:{error['code']}"
            yield {"type": "error", "error": error, "id": str(seq + 1), "progress": "ERROR"}
        finally:
            self._release()
            log.info(
                "stream end id=%s flow=%s transport=%s outcome=%s events=%d duration_ms=%.1f",
                self.id,
                spec.name,
                self.transport,
                outcome,
                seq + (outcome != "cancelled"),
                (time.monotonic() - started) * 1000,
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
