"""Load the object to serve from ``path/to/app.py:obj`` or ``package.module:obj``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from llmbrick import Brick, FlowRegistry, FlowRuntime, Pipeline

__all__ = ["TargetError", "load_target"]

#: Names tried, in order, when a target gives no ``:obj``.
_DEFAULT_NAMES = ("pipeline", "runtime", "registry", "brick", "server", "app")


class TargetError(Exception):
    """The target cannot be loaded or is not something the gateway can serve."""


def load_target(spec: str) -> object:
    """Import ``spec`` and return a Pipeline, Brick, FlowRegistry or FlowRuntime.

    A server object (``SSEServer`` and the like) is accepted too: its runtime is used.

    Raises:
        TargetError: with a one-line explanation.
    """
    location, _, name = spec.partition(":")
    if location.endswith(".py") or "/" in location:
        module = _import_file(Path(location))
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise TargetError(f"cannot import {location!r}: {exc}") from None
    if name:
        if not hasattr(module, name):
            raise TargetError(f"{location} has no attribute {name!r}")
        obj = _servable(getattr(module, name))
        if obj is None:
            raise TargetError(
                f"{spec} is a {type(getattr(module, name)).__name__}; expected a Pipeline, "
                "a Brick, a FlowRegistry or a FlowRuntime"
            )
        return obj
    for candidate in _DEFAULT_NAMES:
        obj = _servable(getattr(module, candidate, None))
        if obj is not None:
            return obj
    tried = ", ".join(_DEFAULT_NAMES)
    raise TargetError(f"{location} defines none of {tried}; name one as {location}:NAME")


def _servable(obj: object) -> object | None:
    """``obj`` itself, the runtime of a server object, or ``None`` if it cannot be served."""
    runtime = getattr(obj, "runtime", None)
    if isinstance(runtime, FlowRuntime):
        return runtime
    if isinstance(obj, Pipeline | Brick | FlowRegistry | FlowRuntime):
        return obj
    return None


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise TargetError(f"no such file: {path}")
    module_name = f"llmbrick_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Let the app import its siblings, as `python path/to/app.py` would.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise TargetError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module
