"""Pure SSE encoding: event dicts to frames, error codes to HTTP statuses. No I/O."""

from __future__ import annotations

from typing import Any

import orjson

from llmbrick import ErrorCode, ErrorInfo, Event

__all__ = [
    "PING",
    "accepts_event_stream",
    "accepts_json",
    "decode_frame",
    "encode_event",
    "error_body",
    "is_json_content_type",
    "status_for",
]

#: A comment frame; clients ignore it, proxies see traffic.
PING = b": ping\n\n"

_STATUS: dict[str, int] = {
    ErrorCode.INVALID_ARGUMENT: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.RESOURCE_EXHAUSTED: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL: 500,
}


def status_for(code: str) -> int:
    """The HTTP status for a neutral error code (500 for codes it does not know)."""
    return _STATUS.get(code, 500)


def encode_event(event: Event) -> bytes:
    """One SSE frame: ``id``, ``event`` (``message`` or ``error``) and compact JSON ``data``."""
    name = b"error" if event["type"] == "error" else b"message"
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event["id"].encode(),
        name,
        orjson.dumps(event),
    )


def error_body(error: ErrorInfo | dict[str, Any]) -> bytes:
    """The JSON body of an HTTP error response: ``{"error": {code, message, details}}``."""
    return orjson.dumps({"error": error})


def _media_types(header: str) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in header.split(",")]


def accepts_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header allows ``text/event-stream`` (missing means yes)."""
    if not accept or not accept.strip():
        return True
    return any(t in ("text/event-stream", "text/*", "*/*") for t in _media_types(accept))


def accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header allows a JSON document (missing means yes)."""
    if not accept or not accept.strip():
        return True
    return any(
        t in ("application/json", "application/*", "*/*") or t.endswith("+json")
        for t in _media_types(accept)
    )


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a request body declared as ``content_type`` is JSON (missing means yes)."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def decode_frame(frame: bytes) -> Event | None:
    """The event in one SSE frame (without its blank-line terminator); ``None`` for comments."""
    data = [line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return None
    event: Event = orjson.loads(b"\n".join(data))
    return event
