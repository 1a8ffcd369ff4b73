"""The app the soak test serves: ``llmbrick serve benchmarks.soak_app:runtime --store memory``.

``benchmarks/soak.py`` starts the gateway on this runtime and drives it. Every stream
runs the benchmark suite's paced flow (``default`` of ``benchmarks/app.py``: ``count``
``text`` events on the schedule of ``metadata.bench``), under three names that differ
only in their disconnect policy, so the soak can tell its streams apart on the server:

- ``soak``: the streams read to their end (the runtime's default policy, ``grace``);
- ``soak_cancel``: the streams whose client disconnects mid-stream, ``on_disconnect="cancel"``,
  so each must be cancelled at once;
- ``soak_resume``: the streams whose client drops its connection and resumes,
  ``on_disconnect="grace"``: the flow runs on while the client is away.

Each counts, in this process, the flows started and how they ended: ``done`` (the
generator ran to its end), ``cancelled`` (its ``finally`` saw ``CancelledError`` or
``GeneratorExit``) or ``failed`` (any other exception). The ``stats`` flow answers one
``data`` event with those counters and this process's tasks (``asyncio.all_tasks()``),
open file descriptors, ``VmRSS``, the runtime's active streams, the store's kept
streams, the event loop's worst lag and the garbage collector's pauses since the
previous call, so the soak can check
from outside that no flow leaked and none was left running, whatever the transports
reported.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, cast

from benchmarks.app import build_registry
from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, MemoryStore

__all__ = [
    "FLOWS",
    "OUTCOMES",
    "STATS",
    "GcPauses",
    "LoopLag",
    "counts",
    "registry",
    "runtime",
    "snapshot",
]

#: The soak's flows and their disconnect policies.
FLOWS = {"soak": None, "soak_cancel": "cancel", "soak_resume": "grace"}
#: How a flow can end, as counted.
OUTCOMES = ("done", "cancelled", "failed")
#: The name of the flow that reports :func:`snapshot`.
STATS = "stats"

# The benchmark suite's paced flow itself (reused, not copied): one registry is built
# for it and only its ``default`` handler is kept.
_paced = cast(
    Callable[[ChatRequest], AsyncGenerator[Event]], build_registry().get("default").handler
)

#: Per flow: ``started`` and each of :data:`OUTCOMES`.
counts: dict[str, dict[str, int]] = {
    name: dict.fromkeys(("started", *OUTCOMES), 0) for name in FLOWS
}


def _counted(name: str) -> Any:
    """The paced flow under ``name``, counting its starts and how each one ended."""
    tally = counts[name]

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        tally["started"] += 1
        outcome = "failed"
        try:
            async with aclosing(_paced(request)) as events:
                async for event in events:
                    yield event
            outcome = "done"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            tally[outcome] += 1

    flow.__doc__ = f"The paced benchmark flow, counted as {name!r}."
    return flow


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LoopLag:
    """The longest the event loop was late waking a 50 ms sleeper, between two readings.

    The gateway's is started by the first ``stats`` call (one task, there from idle-before
    on); the load has its own, so a stall of either loop shows up apart from the other's.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    def read(self) -> float:
        """The worst lateness since the previous reading, in seconds (then reset)."""
        if self.task is None:
            self.task = asyncio.create_task(self._watch())
        worst, self.worst = self.worst, 0.0
        return worst

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.05
            await asyncio.sleep(0.05)
            self.worst = max(self.worst, loop.time() - due)


_lag = LoopLag()


class GcPauses:
    """Time the garbage collector stops this process, per generation, from ``gc.callbacks``.

    A store that keeps many events keeps millions of tracked objects, which every full
    collection walks while the event loop waits: the soak reports it next to the loop lag.
    """

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]  # total, per generation
        self.counts = [0, 0, 0]
        self.worst = 0.0  # the longest pause since the previous reading
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = info["generation"]
        self.seconds[generation] += pause
        self.counts[generation] += 1
        self.worst = max(self.worst, pause)

    def read(self) -> dict[str, Any]:
        """Totals so far and the longest pause since the previous reading (then reset)."""
        worst, self.worst = self.worst, 0.0
        return {
            "seconds": [round(value, 3) for value in self.seconds],
            "counts": list(self.counts),
            "pause_max_ms": round(worst * 1000, 1),
        }


_gc = GcPauses()


def snapshot() -> dict[str, Any]:
    """The counters and this process's resources, as the ``stats`` flow reports them.

    ``kept_streams`` is ``None`` when the runtime has no ``MemoryStore`` (the soak
    needs one to resume). ``kept_bytes`` is the store's own estimate of what it
    keeps, which its ``max_total_bytes`` bounds (read from a private helper: there
    is no public total).
    """
    store = runtime.store
    memory = store if isinstance(store, MemoryStore) else None
    return {
        "pid": os.getpid(),
        "flows": {name: dict(tally) for name, tally in counts.items()},
        "loop_lag_ms": round(_lag.read() * 1000, 1),
        "gc": _gc.read(),
        "tasks": len(asyncio.all_tasks()),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_kb": _rss_kb(),
        "active_streams": runtime.active_streams,
        "kept_streams": len(memory) if memory is not None else None,
        "kept_bytes": memory._total() if memory is not None else None,
        "store_budget": memory.max_total_bytes if memory is not None else None,
        "keep_for": memory.keep_for if memory is not None else None,
    }


registry = FlowRegistry()
for _name, _policy in FLOWS.items():
    registry.register(_name, _counted(_name), on_disconnect=_policy)


@registry.flow(STATS)
async def stats(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """The soak's counters and this process's tasks, fds and RSS, as one ``data`` event."""
    yield {"type": "data", "data": snapshot()}


runtime = FlowRuntime(registry)
