"""What every server accepts: a pipeline, brick, flow, registry or runtime."""

from __future__ import annotations

from .registry import FlowRegistry
from .runtime import FlowRuntime

__all__ = ["as_runtime"]


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
