"""Load the object to serve from ``path/to/app.py[:obj]`` or ``package.module[:obj]``."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType

from llmbrick import Brick, FlowRegistry, FlowRuntime, Pipeline

__all__ = ["TargetError", "load_target"]

#: Names asked of a module that defines ``__getattr__`` (its objects are not in ``vars``).
_LAZY_NAMES = ("pipeline", "runtime", "registry", "brick", "server", "app")
_KINDS = "a Pipeline, a Brick, a FlowRegistry, a FlowRuntime or a server object"


class TargetError(Exception):
    """The target cannot be loaded or is not something the gateway can serve.

    The message is one line, except when the target's own code raised while it
    was imported: then it ends with a short traceback of that code.
    """


def load_target(spec: str) -> object:
    """Import ``spec`` and return a Pipeline, Brick, FlowRegistry or FlowRuntime.

    A server object (``SSEServer`` and the like, anything with a ``FlowRuntime``
    as ``.runtime``) is accepted too: its runtime is used. Without ``:obj`` the
    module must define exactly one thing to serve; a registry, the runtime built
    on it and the servers built on that count as one, and so does a pipeline (or
    brick) that another candidate already serves.

    Raises:
        TargetError: with a one-line explanation, or the user's traceback.
    """
    location, _, name = spec.partition(":")
    if location.endswith(".py") or "/" in location:
        module = _import_file(Path(location))
    else:
        module = _import_module(location)
    if not name:
        return _only_candidate(module, location)
    if not hasattr(module, name):
        raise TargetError(f"{location} has no attribute {name!r}")
    obj = _servable(getattr(module, name))
    if obj is None:
        raise TargetError(f"{spec} is a {type(getattr(module, name)).__name__}; expected {_KINDS}")
    return obj


def _servable(obj: object) -> object | None:
    """``obj`` itself, the runtime of a server object, or ``None`` if it cannot be served."""
    if isinstance(obj, Pipeline | Brick | FlowRegistry | FlowRuntime):
        return obj
    try:
        runtime = getattr(obj, "runtime", None)
    except Exception:  # a property of some unrelated object failing: not a server
        return None
    return runtime if isinstance(runtime, FlowRuntime) else None


def _only_candidate(module: ModuleType, location: str) -> object:
    """The one servable object ``module`` defines; TargetError when none or several."""
    # Candidates grouped by the flows behind them: a registry, its runtime and the
    # servers on that runtime are one group. Each member: (name, object, what it serves).
    groups: dict[int, list[tuple[str, object, object]]] = {}
    for attr, value in _module_values(module, location):
        if isinstance(value, type | ModuleType):  # classes and modules, e.g. imported names
            continue
        served = _servable(value)
        if served is not None:
            groups.setdefault(id(_flows_of(served)), []).append((attr, value, served))
    # A pipeline or brick that another group already serves is a part, not an app.
    contained: set[int] = set()
    for members in groups.values():
        contained |= _parts(members[0][2])
    # Each app by its best member: one serving a runtime keeps that runtime's settings.
    apps = [
        min(members, key=lambda member: not isinstance(member[2], FlowRuntime))
        for key, members in groups.items()
        if key not in contained
    ]
    if len(apps) == 1:
        return apps[0][2]
    if not apps:
        raise TargetError(
            f"{location} defines nothing to serve: no Pipeline, Brick, FlowRegistry, "
            "FlowRuntime or server object at module level"
        )
    listed = ", ".join(f"{attr} ({type(value).__name__})" for attr, value, _ in apps)
    raise TargetError(
        f"{location} defines {len(apps)} things to serve: {listed}; pick one with "
        f"{location}:NAME, e.g. {location}:{apps[0][0]}"
    )


def _module_values(module: ModuleType, location: str) -> list[tuple[str, object]]:
    """The module's attributes; for a module that builds its app lazily, the usual names.

    A module ``__getattr__`` (to build a pipeline only when asked for) hides its
    objects from ``vars``; then the conventional names are asked for, as before
    candidates were counted.
    """
    found = list(vars(module).items())
    if "__getattr__" not in vars(module):
        return found
    for name in _LAZY_NAMES:
        if name in vars(module):
            continue
        try:
            found.append((name, getattr(module, name)))
        except AttributeError:
            continue
        except Exception as exc:
            raise TargetError(_failed(location, exc)) from exc
    return found


def _flows_of(served: object) -> object:
    """The object that holds ``served``'s flows: a runtime's registry, else itself."""
    return served.registry if isinstance(served, FlowRuntime) else served


def _parts(served: object) -> set[int]:
    """Ids of the pipelines and bricks ``served`` runs, at any depth (not its own)."""
    holder = _flows_of(served)
    if isinstance(holder, FlowRegistry):
        pending: list[object] = [part for spec in holder for part in (spec.source, spec.handler)]
    else:
        pending = [holder]
    seen: set[int] = set()
    while pending:
        part = pending.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        if isinstance(part, Pipeline):
            pending.extend(part.bricks)
    seen.discard(id(holder))
    return seen


def _import_module(location: str) -> ModuleType:
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        # The target itself (or its package) is missing: one line. A module the
        # target's code imports is missing: that is a bug in the user's code.
        if exc.name is not None and (location == exc.name or location.startswith(exc.name + ".")):
            raise TargetError(
                f"cannot import {location!r}: {exc} (run llmbrick in the folder that holds it, "
                "or give path/to/file.py)"
            ) from None
        raise TargetError(_failed(location, exc)) from exc
    except Exception as exc:
        raise TargetError(_failed(location, exc)) from exc


def _import_file(path: Path) -> ModuleType:
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
        del sys.modules[module_name]
        raise TargetError(_failed(str(path), exc)) from exc
    return module


def _failed(location: str, exc: BaseException) -> str:
    """``importing X failed:`` and a traceback of the user's frames only.

    Our loader's frames, importlib's and the libraries' say nothing about the
    user's mistake; the user's file and line do.
    """
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_file(f.filename)]
    shown = traceback.format_list(frames) + traceback.format_exception_only(exc)
    return f"importing {location} failed:\n" + "".join(shown).rstrip("\n")


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    # Our own packages, wherever they are installed (an editable checkout included).
    for package in (
        "llmbrick",
        "llmbrick_gateway",
        "llmbrick_sse",
        "llmbrick_websocket",
        "llmbrick_grpc",
    ):
        found = importlib.util.find_spec(package)
        if found is not None and found.submodule_search_locations:
            dirs.update(found.submodule_search_locations)
    return tuple(str(Path(d).resolve()) + "/" for d in dirs)


def _is_user_file(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    return not str(Path(filename).resolve()).startswith(_library_dirs())
