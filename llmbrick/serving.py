"""What every server accepts: a pipeline, brick, flow, registry or runtime."""

from __future__ import annotations

from .registry import FlowRegistry
from .runtime import FlowRuntime

__all__ = ["as_runtime"]


def as_runtime(target: object, *, name: str = "default") -> FlowRuntime:
    """Return the runtime to serve ``target`` with.

    A runtime is used as is and a registry is wrapped in a new runtime, so
    several servers handed the same object share one set of flows. Anything
    else (a Pipeline, a Brick, an async generator function) is registered as
    the flow ``name`` of a new registry.

    Raises:
        TypeError: ``target`` cannot be served.
    """
    if isinstance(target, FlowRuntime):
        return target
    if isinstance(target, FlowRegistry):
        return FlowRuntime(target)
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
