"""``FlowStream``, one running flow as adapters iterate it, and ``ResumedStream``, a kept one."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import BaseModel

from .context import RequestContext, _bind, _unbind, new_id
from .errors import DeadlineExceeded, ErrorCode, LLMBrickError, Unavailable
from .events import ErrorInfo, Event, event_problem
from .observe import StreamResult
from .store import StreamLog, StreamRecord, StreamStore

if TYPE_CHECKING:
    from .registry import FlowSpec
    from .runtime import FlowRuntime

__all__ = ["FAIR_SLICE", "FlowStream", "InvokeResult", "ResumedStream", "collect_events"]


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


class FlowStream:
    """One running flow; an async iterator of stamped events. Close it with ``aclose``.

    The consumer's own task runs the flow as it iterates. Without a store,
    closing the stream cancels the flow. With a store, every event is also
    written to the stream's log, which other clients can read (a resume), and
    when the client goes away the flow's disconnect policy decides what
    happens next: ``cancel`` at once, ``grace`` after a while without readers,
    or ``continue`` to the end, the flow then running on without the client.
    Adapters tell the stream that their client left with :meth:`disconnect`
    rather than by cancelling the consumer's task, which would cancel the
    flow's own wait whatever its policy.

    Attributes:
        id: the stream id: random, unique across instances and restarts.
        spec: the flow being run.
        request: the validated request.
        context: who asked, over which transport (see :class:`RequestContext`).
        policy: the disconnect policy in force.
    """

    __slots__ = (
        "_attached",
        "_caller",
        "_driver",
        "_ended",
        "_events",
        "_grace_timer",
        "_leaving",
        "_log",
        "_released",
        "_runtime",
        "_started",
        "_stopping",
        "_waiting",
        "context",
        "grace",
        "id",
        "policy",
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
        policy: str = "cancel",
        grace: float = 0.0,
    ) -> None:
        self._runtime = runtime
        self.spec = spec
        self.request = request
        self.context = context
        self.policy = policy
        self.grace = grace
        self.id = context.stream_id = new_id()
        context._stream = self
        self._caller = caller
        self._released = False
        self._stopping: ErrorInfo | None = None
        # The task inside the flow right now (waiting in it, or letting the loop turn
        # between two of its events), if any: the one _stop() must interrupt and
        # disconnect() must not cancel.
        self._waiting: asyncio.Task[Any] | None = None
        # The consumer's task that runs the flow although its client left (see disconnect).
        self._leaving: asyncio.Task[Any] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._events = self._iterate()
        self._attached = True
        self._started = False
        self._grace_timer: asyncio.TimerHandle | None = None
        self._driver: asyncio.Task[None] | None = None
        store = runtime.store
        if store is None:
            self._log: StreamLog | None = None
        else:
            principal = context.principal.id if context.principal is not None else None
            record = StreamRecord(self.id, spec.name, principal, policy, tag=context.tag)
            self._log = store.add(record)

    @property
    def log(self) -> StreamLog | None:
        """The stream's log in the store (``None`` without a store)."""
        return self._log

    @property
    def kept(self) -> bool:
        """Whether a store keeps this stream, so that clients can resume it."""
        return self._log is not None

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
        """The consumer is done: stop the flow (its ``finally`` blocks run), unless the
        stream is kept and its policy keeps it running for a reader to come back."""
        log = self._log
        if log is None:
            try:
                await self._events.aclose()
            finally:
                self._release()
            return
        if not self._attached or self._leaving is not None:
            # Left already, or the consumer's task still runs the flow, to its end
            # (closing the generator under it would fail).
            self._attached = False
            return
        self._attached = False
        if self._started and (log.finished or (self.policy == "cancel" and not log.readers)):
            # Past its terminal event (the flow's end runs now), or nobody to keep it for.
            await self._events.aclose()
        else:
            # Kept for a reader to come back (or one that already did), or closed before
            # it was read: the flow goes on in a task of its own.
            self._hand_off(log)
        await self._unattended()

    def disconnect(self, task: asyncio.Task[Any]) -> bool:
        """The client of the consumer's ``task`` went away: end that task, keeping the flow
        if its policy says so. Adapters call this instead of ``task.cancel()``.

        A cancel reaching the task while it runs the flow would cancel the flow's own
        wait (a model's reply, say). So when a kept stream's policy keeps the flow, and
        the task is inside the flow, the task is left to run it: it keeps every event
        without handing it to the consumer, and once the flow has ended it ends with
        ``CancelledError``, as the cancel would have ended it.

        Returns:
            True if ``task`` was cancelled now; False if it ends when the flow does
            (do not wait for it, nor close the stream under it).
        """
        if self._log is None or self.policy == "cancel" or task is not self._waiting:
            task.cancel()
            return True
        self._leaving = task
        self._attached = False
        self._unattended_now()  # the grace period starts now, not when the flow ends
        return False

    def _hand_off(self, log: StreamLog) -> None:
        """Run the rest of the flow in a task of its own, into the log."""
        if self._driver is None:
            self._driver = asyncio.get_running_loop().create_task(self._drive(log))

    def cancel(self, message: str = "the stream was cancelled by the client") -> None:
        """End the stream now with a ``CANCELLED`` terminal event; what it produced is kept."""
        self._stop({"code": ErrorCode.CANCELLED.value, "message": message})

    async def wait(self) -> None:
        """Wait until the flow has ended, whichever task runs it (at once if it has)."""
        if not self._released:
            if self._ended is None:
                self._ended = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._ended)
        if self._driver is not None:
            await asyncio.wait([self._driver])

    async def _unattended(self) -> None:
        """A reader left: apply the disconnect policy once nobody reads."""
        if self._unattended_now():
            self.cancel("the client went away")
            await self.wait()

    def _unattended_now(self) -> bool:
        """Start the grace period if nobody reads; True if the flow must be cancelled now."""
        log = self._log
        if log is None or self._attached or log.readers or log.finished:
            return False
        if self.policy == "cancel":
            return True
        if self.policy == "grace" and self._grace_timer is None:
            self._grace_timer = asyncio.get_running_loop().call_later(self.grace, self._grace_over)
        return False

    def _grace_over(self) -> None:
        self._grace_timer = None
        log = self._log
        if log is not None and not log.readers and not log.finished:
            self.cancel(f"no client came back within {self.grace:g} s")

    def _reattached(self) -> None:
        """A reader came back (a resume): the grace period stops."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    async def _drive(self, log: StreamLog) -> None:
        """Run the rest of the flow once its first client left: the flow keeps its events
        in the log, which readers (resumes) follow."""
        events = self._events
        async with aclosing(events):
            async for _ in events:
                if log.readers and log.behind() > log.window:
                    await log.room()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._runtime._release(self)
            ended = self._ended
            if ended is not None and not ended.done():
                ended.set_result(None)

    def _stopped_by_runtime(self) -> bool:
        # Absorb the cancel that _stop() sent, so the consumer's task goes on normally.
        task = asyncio.current_task()
        if self._stopping and task is not None:
            task.uncancel()
            return True
        return False

    def _stop(self, error: ErrorInfo) -> None:
        if self._stopping is None:
            self._stopping = error
        if self._waiting is not None:
            self._waiting.cancel()
        if self._log is not None:
            self._log.wake()  # a flow waiting for a slow reader checks the stop too

    async def _iterate(self) -> AsyncGenerator[Event]:
        """Run the flow: stamp its events, keep them in the log (a kept stream) and yield
        them, then the terminal event; once a kept stream's client left in the middle of
        the flow (see :meth:`disconnect`), keep them without yielding."""
        self._started = True
        runtime = self._runtime
        spec = self.spec
        context = self.context
        observers = runtime._observers
        per_event = observers.per_event
        keep = self._log
        kept = keep.events if keep is not None else []
        appended = _appended(runtime.store) if runtime.store is not None else None
        log = runtime.logger
        started = time.monotonic()
        first: float | None = None
        timeout = spec.timeout if spec.timeout is not None else runtime.timeout
        # The client's own deadline (context.deadline) is its transport's to enforce
        # (gRPC cancels the call); flows may read it to budget their work.
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        current_task = _task_lookup(runtime)
        seq = 0
        turn = FAIR_SLICE
        outcome = ErrorCode.CANCELLED.value
        bound = _bind(context)
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
            final: Event | None = None
            error: ErrorInfo | None = None
            try:
                flow = spec.handler(self.request)
                try:  # aclosing() would be one more object held while the flow runs
                    next_event = flow.__anext__
                    while True:
                        if self._stopping:
                            raise _Stopped
                        # Adapters may hand the stream to another task mid-way (to read
                        # ahead while a slow client drains), so look the task up each time.
                        self._waiting = current_task()
                        try:
                            turn -= 1
                            if not turn:
                                # Let the loop turn: other streams, health checks and the
                                # disconnect watchers run even if this flow never awaits.
                                turn = FAIR_SLICE
                                await asyncio.sleep(0)
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
                            final = {
                                **event,
                                "id": str(seq),
                                "progress": "DONE" if kind == "done" else "ERROR",
                            }
                            break
                        stamped: Event = {**event, "id": str(seq), "progress": "IN_PROGRESS"}
                        if per_event:
                            observers.call(per_event, "event", self, stamped)
                        if keep is not None:
                            # Straight onto the log's list, counted every few dozen
                            # events: keeping a stream costs little more than not.
                            kept.append(stamped)
                            if len(kept) >= keep.due:
                                keep.settle()
                            if appended is not None:
                                appended(keep, stamped)
                            if self._leaving is not None:
                                # Its client left while the flow made this event: the
                                # flow goes on in this task, for readers to come back.
                                if keep.readers and keep.behind() > keep.window:
                                    await keep.room()
                                continue
                        yield stamped
                finally:
                    close = getattr(flow, "aclose", None)
                    if close is not None:
                        await close()
            except _Stopped:
                error = self._stopping or Unavailable("the server is shutting down").to_info()
            except _Deadline:
                message = f"flow {spec.name!r} ran past its {timeout:g} s timeout"
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
            if error is not None:
                seq += 1
                final = {"type": "error", "error": error, "id": str(seq), "progress": "ERROR"}
            elif final is None:
                seq += 1
                final = {"type": "done", "id": str(seq), "progress": "DONE"}
            outcome = "ok" if final["type"] == "done" else final["error"]["code"]
            if per_event:
                observers.call(per_event, "event", self, final)
            if keep is not None:
                keep.append(final)
                if appended is not None:
                    appended(keep, final)
                if self._leaving is not None:
                    # Its consumer's task ends as the cancel it was spared would have ended it.
                    raise asyncio.CancelledError
            yield final
        finally:
            if keep is not None and not keep.finished:
                # Closed before its terminal event: readers still get an end.
                why = "the client went away" if self._driver is None else "the run was stopped"
                _end_log(keep, appended, why)
            self._release()
            _unbind(bound)
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


def _appended(store: StreamStore) -> Callable[[StreamLog, Event], None] | None:
    """The store's per-event hook, or None when it has none (the call is then skipped)."""
    if type(store).appended is StreamStore.appended:
        return None
    return store.appended


def _end_log(
    log: StreamLog, appended: Callable[[StreamLog, Event], None] | None, message: str
) -> None:
    """Give a log whose flow was closed before its end a ``CANCELLED`` terminal event."""
    ended: Event = {
        "type": "error",
        "error": {"code": ErrorCode.CANCELLED.value, "message": message},
        "id": str(log.last + 1),
        "progress": "ERROR",
    }
    log.append(ended)
    if appended is not None:
        appended(log, ended)


def _task_lookup(runtime: FlowRuntime) -> Callable[[], asyncio.Task[Any] | None]:
    """A cheap ``asyncio.current_task`` for the per-event path.

    Before Python 3.12 ``current_task`` is written in Python and costs about a
    microsecond; the loop's entry in asyncio's task table is the same answer. The
    runtime keeps the lookup of its loop, so a stream does not hold one of its own.
    """
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if sys.version_info >= (3, 12) or not isinstance(table, dict):
        return asyncio.current_task
    loop = asyncio.get_running_loop()
    cached = runtime._task_lookup
    if cached is None or cached[0] is not loop:
        cached = runtime._task_lookup = (loop, partial(table.get, loop))
    return cached[1]


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


class ResumedStream:
    """A kept stream read again: its events after a given id, then live until its end.

    Iterate it for event dicts (the same ones the first client got) and close
    it with ``aclose`` when the client leaves; the flow's disconnect policy
    then applies as for any reader.

    Attributes:
        id: the stream id.
        record: the stream's record (flow, principal, policy).
    """

    __slots__ = ("_events", "_on_close", "id", "record")

    def __init__(
        self,
        record: StreamRecord,
        events: AsyncIterator[Event],
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        self.id = record.id
        self.record = record
        self._events = events
        self._on_close = on_close

    @property
    def flow(self) -> str:
        """The flow's name."""
        return self.record.flow

    @property
    def kept(self) -> bool:
        """Always true: only kept streams can be read again."""
        return True

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    def __anext__(self) -> Any:
        return self._events.__anext__()

    def disconnect(self, task: asyncio.Task[Any]) -> bool:
        """The client of the reading ``task`` went away: cancel it (a reader runs no flow).

        Returns:
            True, as :meth:`FlowStream.disconnect` when it cancels the task now.
        """
        task.cancel()
        return True

    async def aclose(self) -> None:
        """Stop reading."""
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            await on_close()

    async def collect(self) -> InvokeResult:
        """Read to the end and return everything at once."""
        events: list[Event] = []
        async with aclosing(self):
            async for event in self:
                events.append(event)
        return collect_events(events)
