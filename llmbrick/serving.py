"""What every server accepts (a pipeline, brick, flow, registry or runtime), and how a
serving process sets up its garbage collector."""

from __future__ import annotations

import gc

from .registry import FlowRegistry
from .runtime import FlowRuntime

__all__ = ["FULL_COLLECTION_EVERY", "as_runtime", "settle_heap"]

#: Collections of the middle generation between two full ones, once serving (Python: 10).
FULL_COLLECTION_EVERY = 100


def settle_heap() -> None:
    """Set up a serving process's garbage collector; call once, just before serving.

    A full collection stops the event loop while it walks every object the streams
    hold: on a server with a few hundred streams, pauses of tens of milliseconds that
    show as late tokens and slow new streams. What the process holds before serving
    (modules, the app, the registry) lives as long as it does, so it is frozen out of
    the collector's reach (``gc.freeze``), and full collections run ten times less
    often. Young objects are collected as usual and garbage cycles are still freed.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def as_runtime(target: object, *, name: str = "default") -> FlowRuntime:
    """Return the runtime to serve ``target`` with.

    A runtime is used as is. A registry gets one runtime, made the first time
    and reused after, so several servers handed the same registry share one
    runtime (one ``max_streams``, one drain) as they would share a runtime
    handed to each. Anything else (a Pipeline, a Brick, an async generator
    function) is registered as the flow ``name`` of a new registry.

    Raises:
        TypeError: ``target`` cannot be served.
    """
    if isinstance(target, FlowRuntime):
        return target
    if isinstance(target, FlowRegistry):
        runtime: FlowRuntime | None = target._runtime
        if runtime is None:
            runtime = target._runtime = FlowRuntime(target)
        return runtime
    if target is None:
        return FlowRuntime()
    registry = FlowRegistry()
    try:
        registry.register(name, target)
    except TypeError:
        raise TypeError(
            "a server needs a Pipeline, a Brick, an async generator flow, a FlowRegistry "
            f"or a FlowRuntime; got {target!r}"
        ) from None
    return FlowRuntime(registry)
