"""``FlowRuntime``: runs flows for every transport, with one set of rules.

It authenticates the caller, validates the request, runs the flow inside
``contextlib.aclosing``, stamps ``id`` and ``progress`` on each event,
guarantees exactly one terminal event, turns exceptions into ``error`` events
and enforces the limits (timeout, concurrent streams, per-caller limits). With
a store it keeps every stream's events, so that a client can resume a stream
after a drop, and applies each flow's disconnect policy. Adapters bring any
concurrency (pings, disconnect listeners) themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ValidationError

from .auth import Authenticator, CallerLimits
from .context import Principal, RequestContext
from .errors import (
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .events import Event
from .observe import RuntimeObserver, _Observers
from .registry import FlowRegistry, FlowSpec
from .store import POLICIES, StreamLog, StreamRecord, StreamStore
from .stream import FlowStream, InvokeResult, ResumedStream

__all__ = ["DISCONNECT_HEADER", "FlowRuntime"]

#: The header (HTTP) or metadata key (gRPC) a client sets to pick a disconnect policy.
DISCONNECT_HEADER = "llmbrick-on-disconnect"


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
        store: keeps streams' events so clients can resume them (see
            :mod:`llmbrick.store`); ``None`` keeps nothing.
        on_disconnect: the default disconnect policy of flows that set none
            (default: ``grace`` with a store, which is the only case where it matters).
        grace: seconds of the ``grace`` policy for flows that set none.
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
        store: StreamStore | None = None,
        on_disconnect: str = "grace",
        grace: float = 30.0,
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
        if on_disconnect not in POLICIES:
            raise ValueError(
                f"on_disconnect must be one of {', '.join(POLICIES)}; got {on_disconnect!r}"
            )
        if not grace > 0:
            raise ValueError(f"grace must be positive, got {grace!r}")
        self._store: StreamStore | None = None
        self.store = store
        self.on_disconnect = on_disconnect
        self.grace = grace
        self._streams: dict[str, FlowStream] = {}
        #: The current-task lookup of the loop last served (see ``stream._task_lookup``).
        self._task_lookup: tuple[Any, Callable[[], asyncio.Task[Any] | None]] | None = None
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def store(self) -> StreamStore | None:
        """Where streams are kept (``None``: nowhere; nothing can be resumed)."""
        return self._store

    @store.setter
    def store(self, store: StreamStore | None) -> None:
        self._store = store
        if store is not None:
            # Another instance asked (through a shared store) to cancel one of ours.
            store.on_cancel(self._cancel_here)

    def _cancel_here(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.cancel()

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
        policy = self._policy(spec, context)
        if self.max_streams is not None and len(self._streams) >= self.max_streams:
            raise Overloaded(f"the server runs its maximum of {self.max_streams} streams")
        caller = None
        if self.caller_limits is not None:
            caller = context.caller
            self.caller_limits.acquire(caller)
        context.flow = spec.name
        grace = spec.grace if spec.grace is not None else self.grace
        stream = FlowStream(self, spec, request, context, caller, policy, grace)
        self._streams[stream.id] = stream
        self._idle.clear()
        return stream

    def _policy(self, spec: FlowSpec, context: RequestContext) -> str:
        if self.store is None:
            return "cancel"  # nothing is kept, so nothing could be resumed
        asked = context.headers.get(DISCONNECT_HEADER)
        if asked is None:
            return spec.on_disconnect or self.on_disconnect
        asked = asked.strip().lower()
        allowed = spec.disconnect_choices
        if spec.on_disconnect is None:
            # What every client gets anyway may also be asked for by name.
            allowed = allowed | {self.on_disconnect}
        if asked not in allowed:
            choices = ", ".join(sorted(allowed))
            raise InvalidRequest(
                f"flow {spec.name!r} lets a client choose {choices} on disconnect, "
                f"not {asked[:16]!r}"
            )
        return asked

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
        streams = list(self._streams.values())
        error = Unavailable("the server is shutting down; resume elsewhere").to_info()
        for stream in streams:
            stream._stop(error)
        return len(streams)

    def stream(self, stream_id: str) -> FlowStream | None:
        """The running stream with this id, on this runtime."""
        return self._streams.get(stream_id)

    def _visible(
        self, record: StreamRecord | None, context: RequestContext, token: str | None
    ) -> StreamRecord:
        principal = context.principal.id if context.principal is not None else None
        if record is None or not record.allows(principal, token):
            # Another principal's stream looks exactly like one that does not exist.
            raise FlowNotFound("no such stream (it may have expired)")
        return record

    async def find(self, tag: str, *, context: RequestContext) -> str | None:
        """The id of the newest kept stream started with ``tag`` that the caller may read.

        ``None`` without a store, when no stream has the tag any more, or when it is
        someone else's (which looks the same).

        Raises:
            Unauthenticated: with an authenticator, when the caller is not authenticated.
        """
        await self.authenticate(context)
        if self.store is None:
            return None
        record = await self.store.tagged(tag)
        principal = context.principal.id if context.principal is not None else None
        if record is None or not record.allows(principal, None):
            return None
        return record.id

    async def resume(
        self,
        stream_id: str,
        after: int = 0,
        *,
        context: RequestContext,
        token: str | None = None,
    ) -> ResumedStream:
        """Read a kept stream again: its events after ``after``, then live until its end.

        Args:
            stream_id: the stream's id.
            after: the last event id the client has (0: from the start).
            context: the caller; only the principal that started the stream may
                resume it, unless it presents the stream's ``token``.
            token: the stream's resume token: a capability for this one stream,
                which needs no credentials besides (what a browser's
                ``EventSource`` URL can carry).

        Raises:
            FlowNotFound: unknown, expired or someone else's stream.
            InvalidRequest: ``after`` is negative.
            LLMBrickError: ``FAILED_PRECONDITION`` when the events after
                ``after`` are no longer all kept; ``UNAVAILABLE`` when the store
                cannot be reached.
        """
        if token is None:
            await self.authenticate(context)
        if after < 0:
            raise InvalidRequest(f"a stream resumes after an event id >= 0, got {after}")
        store = self.store
        if store is None:
            raise FlowNotFound("this server keeps no streams (start it with a store)")
        log = store.get(stream_id)
        if log is None:
            record = self._visible(await store.lookup(stream_id), context, token)
            return ResumedStream(record, store.remote(record, after))
        record = self._visible(log.record, context, token)
        after = _clamp(log, after)
        log.events_after(after)  # raises at once if some were dropped
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream._reattached()

        async def left() -> None:
            if stream is not None:
                await stream._unattended()

        return ResumedStream(record, log.follow(after), left)

    async def cancel(
        self, stream_id: str, *, context: RequestContext, token: str | None = None
    ) -> None:
        """End a stream with a ``CANCELLED`` terminal event, whoever reads it; its output is kept.

        Raises:
            FlowNotFound: unknown, expired or someone else's stream.
        """
        if token is None:
            await self.authenticate(context)
        stream = self._streams.get(stream_id)
        if stream is not None:
            log = stream.log
            if log is not None:
                self._visible(log.record, context, token)
            elif token is not None:
                raise FlowNotFound("no such stream (it may have expired)")
            else:
                principal = context.principal.id if context.principal is not None else None
                owner = stream.context.principal
                if (owner.id if owner is not None else None) != principal:
                    raise FlowNotFound("no such stream (it may have expired)")
            stream.cancel()
            return
        store = self.store
        if store is None:
            raise FlowNotFound("no such stream running here")
        log = store.get(stream_id)
        if log is not None:
            self._visible(log.record, context, token)
            return  # it already ended; its terminal event stays
        record = self._visible(await store.lookup(stream_id), context, token)
        await store.cancel_remote(record)

    async def aclose(self) -> None:
        """Close the bricks of every registered pipeline (their ``aclose``)."""
        for spec in self.registry:
            close = getattr(spec.source, "aclose", None)
            if close is not None and not isinstance(spec.source, type):
                await close()

    def _release(self, stream: FlowStream) -> None:
        self._streams.pop(stream.id, None)
        if stream._caller is not None and self.caller_limits is not None:
            self.caller_limits.release(stream._caller)
        if not self._streams:
            self._idle.set()


def _clamp(log: StreamLog, after: int) -> int:
    """A resume from past the end of a finished stream gets its terminal event only."""
    if log.finished and after >= log.last:
        return log.last - 1
    return after
