"""Events: the one vocabulary every transport speaks.

An event is a plain, JSON-serialisable ``dict`` with a string ``type``. Flows
yield them; the runtime stamps ``id`` and ``progress`` onto a copy and
guarantees exactly one terminal event (``done`` or ``error``) per stream.
Treat an event as immutable once yielded: adapters encode it, never change it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, Required, TypedDict

__all__ = [
    "TERMINAL_TYPES",
    "Context",
    "ErrorInfo",
    "Event",
    "Progress",
    "data_event",
    "done_event",
    "error_event",
    "event_problem",
    "meta_event",
    "text_event",
]

Progress = Literal["IN_PROGRESS", "DONE", "ERROR"]

#: Event types that end a stream.
TERMINAL_TYPES = frozenset({"done", "error"})


class ErrorInfo(TypedDict):
    """The ``error`` object of an ``error`` event."""

    code: str
    message: str
    details: NotRequired[Any]


class Context(TypedDict, total=False):
    """Where an event belongs in a conversation."""

    conversationId: str
    cursor: str


class Event(TypedDict, total=False):
    """One event of a stream. Only ``type`` is required from a flow."""

    type: Required[str]
    id: str
    progress: Progress
    text: str
    model: str
    context: Context
    metadata: dict[str, Any]
    data: dict[str, Any]
    error: ErrorInfo


def text_event(text: str, *, model: str | None = None) -> Event:
    """A chunk of generated text."""
    event: Event = {"type": "text", "text": text}
    if model is not None:
        event["model"] = model
    return event


def meta_event(metadata: dict[str, Any]) -> Event:
    """Information about the stream rather than content (e.g. a detected intent)."""
    return {"type": "meta", "metadata": metadata}


def data_event(data: dict[str, Any], *, type: str = "data") -> Event:
    """A structured payload; ``type`` may be any lowercase name the flow chooses."""
    return {"type": type, "data": data}


def done_event() -> Event:
    """The successful end of a stream."""
    return {"type": "done"}


def error_event(code: str, message: str, details: Any = None) -> Event:
    """The failed end of a stream."""
    error: ErrorInfo = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error}


_SCALARS = (bool, type(None))
# Beyond 64 bits, JSON encoders (and protobuf) disagree or refuse.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _utf8_problem(text: str, path: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        return f"{path} has a lone surrogate, which UTF-8 cannot carry"
    return None


def _json_problem(value: Any, path: str, depth: int) -> str | None:
    kind = type(value)
    if kind is str:
        return _utf8_problem(value, path)
    if kind in _SCALARS:
        return None
    if kind is int:
        return None if _INT_MIN <= value <= _INT_MAX else f"{path} is an integer beyond 64 bits"
    if kind is float:
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot carry"
    if depth > 32:
        return f"{path} is nested deeper than 32 levels"
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{path} has a non-string key {key!r}"
            if type(item) is str:
                if item.isascii():
                    continue
            elif type(item) in _SCALARS:
                continue
            problem = _json_problem(item, f"{path}.{key}", depth + 1)
            if problem:
                return problem
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is a {kind.__name__}, which is not JSON-serialisable"


def event_problem(event: object) -> str | None:
    """Say what makes ``event`` unfit to send, or return ``None`` if it is fine.

    The check is structural (dicts, lists, strings, finite numbers, booleans,
    null) so that the core needs no JSON library and every transport gets the
    same verdict.
    """
    if type(event) is not dict:
        return f"a flow must yield event dicts, got {type(event).__name__}"
    kind = event.get("type")
    if type(kind) is not str or not kind:
        return "an event needs a non-empty string 'type'"
    if not kind.islower() and kind != kind.lower():
        return f"event type {kind!r} must be a lowercase name"
    if kind == "error":
        error = event.get("error")
        if (
            type(error) is not dict
            or type(error.get("code")) is not str
            or type(error.get("message")) is not str
        ):
            return "an 'error' event needs error.code and error.message strings"
    # Most events are a few flat ASCII strings: check those inline, walk the rest.
    for key, value in event.items():
        if type(value) is str and value.isascii() and type(key) is str:
            continue
        return _json_problem(event, "event", 0)
    return None
