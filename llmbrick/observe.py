"""Observer hooks: how metrics, tracing and audit logs see streams without touching adapters.

Subclass :class:`RuntimeObserver`, override the hooks you need and add it with
``FlowRuntime.add_observer``. Hooks run synchronously on the event loop, in
the task driving the stream: keep them cheap (count, stamp, enqueue). An
exception in a hook is logged once per observer and hook, and never reaches
the stream. The per-event hook is only called for observers that override it,
so the others cost nothing per event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import RequestContext
    from .errors import LLMBrickError
    from .events import Event
    from .stream import FlowStream

__all__ = ["RuntimeObserver", "StreamResult"]

_log = logging.getLogger("llmbrick.observe")


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a stream ended.

    Attributes:
        outcome: ``"ok"``, or the error code (``"CANCELLED"`` when the client went away).
        events: events delivered, the terminal one included.
        duration: seconds from start to end.
        first_event: seconds to the first event, or ``None`` if there was none.
    """

    outcome: str
    events: int
    duration: float
    first_event: float | None


class RuntimeObserver:
    """Base class of observers: every hook does nothing until overridden."""

    def rejected(self, context: RequestContext, error: LLMBrickError) -> None:
        """A request was refused before any stream started (bad credentials, unknown flow...)."""

    def stream_started(self, stream: FlowStream) -> None:
        """A stream passed every check and its flow is about to run."""

    def first_event(self, stream: FlowStream, seconds: float) -> None:
        """The stream produced its first event ``seconds`` after it started."""

    def event(self, stream: FlowStream, event: Event) -> None:
        """Each event, stamped, before the adapter sends it (costs a call per event)."""

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        """The stream ended, for whatever reason; called exactly once per started stream."""

    def brick_started(self, stream: FlowStream, brick: Any) -> Any:
        """A pipeline brick starts; whatever this returns is handed to :meth:`brick_ended`."""

    def brick_ended(
        self,
        stream: FlowStream,
        brick: Any,
        token: Any,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """A pipeline brick finished one run (a streaming brick: its whole stream)."""


def _overrides(observer: RuntimeObserver, name: str) -> bool:
    return getattr(type(observer), name) is not getattr(RuntimeObserver, name)


class _Observers:
    """The runtime's observers, sorted by the hooks they override, failures contained."""

    __slots__ = ("_failed", "all", "per_brick", "per_event")

    def __init__(self) -> None:
        self.all: tuple[RuntimeObserver, ...] = ()
        self.per_event: tuple[RuntimeObserver, ...] = ()
        self.per_brick: tuple[RuntimeObserver, ...] = ()
        self._failed: set[tuple[int, str]] = set()

    def add(self, observer: RuntimeObserver) -> None:
        if not isinstance(observer, RuntimeObserver):
            raise TypeError(f"observers subclass RuntimeObserver, got {observer!r}")
        self.all = (*self.all, observer)
        if _overrides(observer, "event"):
            self.per_event = (*self.per_event, observer)
        if _overrides(observer, "brick_started") or _overrides(observer, "brick_ended"):
            self.per_brick = (*self.per_brick, observer)

    def call(self, observers: tuple[RuntimeObserver, ...], hook: str, *args: Any) -> list[Any]:
        results = []
        for observer in observers:
            try:
                results.append(getattr(observer, hook)(*args))
            except Exception:
                results.append(None)
                key = (id(observer), hook)
                if key not in self._failed:
                    self._failed.add(key)
                    _log.exception("observer %r failed in %s (logged once)", observer, hook)
        return results
