"""Pure SSE encoding: event dicts to frames, error codes to HTTP statuses. No I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmbrick import ErrorCode, ErrorInfo, Event

from .wire import FrameWriter, Opening, Rejected

if TYPE_CHECKING:
    from llmbrick import FlowRuntime
    from llmbrick.context import Headers
    from llmbrick.stream import FlowStream, InvokeResult

__all__ = [
    "PING",
    "SSECodec",
    "accepts_event_stream",
    "accepts_json",
    "decode_frame",
    "encode_event",
    "error_body",
    "is_json_content_type",
    "status_for",
    "status_for_error",
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


def status_for_error(error: ErrorInfo | dict[str, Any]) -> int:
    """As :func:`status_for`, except that a caller's own limit is 429 rather than 503."""
    code = error["code"]
    if code == ErrorCode.RESOURCE_EXHAUSTED:
        details = error.get("details")
        if isinstance(details, dict) and details.get("limit") == "caller":
            return 429
    return _STATUS.get(code, 500)


def encode_event(event: Event, stream_id: str | None = None) -> bytes:
    """One SSE frame: ``id``, ``event`` (``message`` or ``error``) and compact JSON ``data``.

    With ``stream_id`` (a kept stream), the ``id:`` line is ``<stream id>:<event id>``,
    so that the ``Last-Event-ID`` a client sends back names the stream as well.
    """
    return _frame(b"id: " if stream_id is None else _id_prefix(stream_id), event)


def _id_prefix(stream_id: str) -> bytes:
    return b"id: %s:" % stream_id.encode()


def _frame(prefix: bytes, event: Event) -> bytes:
    name = b"error" if event["type"] == "error" else b"message"
    return b"%s%s\nevent: %s\ndata: %s\n\n" % (
        prefix,
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


class _Frames:
    """The SSE writer: stateless, one frame per event."""

    __slots__ = ()

    def encode(self, event: Event) -> bytes:
        return _frame(b"id: ", event)

    def close(self) -> bytes:
        return b""


class _KeptFrames:
    """The SSE writer of a kept stream: ``id:`` lines carry the stream id too."""

    __slots__ = ("_prefix",)

    def __init__(self, stream_id: str) -> None:
        self._prefix = _id_prefix(stream_id)  # encoded once, not per event

    def encode(self, event: Event) -> bytes:
        return _frame(self._prefix, event)

    def close(self) -> bytes:
        return b""


_FRAMES = _Frames()
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SSECodec:
    """llmbrick's own SSE format on the shared endpoint (``POST /chat/completions``).

    The body is the flow's request plus ``flow`` and ``stream``; ``stream`` is a
    transport option, so it is dropped for flows whose request model lacks it.

    Args:
        detached: requests start a stream and are answered at once with where to
            follow it (``POST /streams``).
    """

    transport = "sse"
    stream_headers = _SSE_HEADERS
    ping = PING

    def __init__(self, *, detached: bool = False) -> None:
        self.detached = detached

    def open(self, body: Any, headers: Headers, runtime: FlowRuntime) -> Opening:
        if not isinstance(body, dict):
            raise Rejected.invalid(
                422, f"the body must be a JSON object, got {type(body).__name__}"
            )
        streaming = body.get("stream", True) is not False and not self.detached
        accept = headers.get("accept")
        if streaming and not accepts_event_stream(accept):
            raise Rejected.invalid(
                406,
                f"Accept {str(accept)[:64]!r} excludes text/event-stream; "
                'accept it, or send "stream": false for one JSON document',
            )
        if not streaming and not self.detached and not accepts_json(accept):
            raise Rejected.invalid(406, f"Accept {str(accept)[:64]!r} excludes application/json")
        if "stream" in body:
            spec = runtime.registry.get(runtime.flow_name(None, body))
            if "stream" not in spec.request_model.model_fields:
                body = {key: value for key, value in body.items() if key != "stream"}
        return Opening(None, body, streaming, detached=self.detached)

    def writer(self, stream: FlowStream, opening: Opening) -> FrameWriter:
        return _KeptFrames(stream.id) if stream.kept else _FRAMES

    def document(self, result: InvokeResult, stream: FlowStream, opening: Opening) -> bytes:
        return orjson.dumps(result)

    def status_for(self, error: ErrorInfo) -> int:
        return status_for_error(error)

    def error_body(self, error: ErrorInfo, status: int) -> bytes:
        return error_body(error)
