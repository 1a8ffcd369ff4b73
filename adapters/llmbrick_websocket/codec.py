"""The WebSocket protocol as pure functions: client frames in, server frames out. No I/O.

Client to server (JSON text frames)::

    {"type": "start", "id": "<stream id>", "request": {...}}
    {"type": "cancel", "id": "<stream id>"}
    {"type": "cancel", "streamId": "<server's id>"}
    {"type": "resume", "id": "<stream id>", "streamId": "<server's id>", "after": <last event id>}
    {"type": "flows"}

Server to client::

    {"type": "started", "id": "<stream id>", "streamId": "<the server's stream id>"}
    {"id": "<stream id>", "event": {...the event dict as the runtime stamped it...}}
    {"type": "error", "id": "<stream id, when known>", "error": {"code": ..., "message": ...}}
    {"type": "flows", "flows": [{"name": ..., "description": ..., "requestSchema": {...}}, ...]}

``flows`` asks for the flow list (what ``GET /flows`` and gRPC ``ListFlows``
answer); the answers come in the order of the questions.

A browser cannot set an ``Authorization`` header on a WebSocket: it offers the
subprotocols ``llmbrick`` and ``llmbrick.bearer.<key>`` instead, and the server
accepts ``llmbrick``.

The second kind answers a frame the server could not act on; stream outcomes,
errors included, always travel as the stream's own terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmbrick import ErrorCode, ErrorInfo, Event

__all__ = [
    "BEARER_PREFIX",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "MAX_ID_LENGTH",
    "MESSAGE_TOO_BIG",
    "NORMAL_CLOSURE",
    "POLICY_VIOLATION",
    "SERVICE_RESTART",
    "SUBPROTOCOL",
    "Cancel",
    "ListFlows",
    "Problem",
    "Resume",
    "ServerFrame",
    "Start",
    "bearer_from_subprotocols",
    "bearer_subprotocols",
    "cancelled_event",
    "close_for",
    "code_for_close",
    "encode_cancel",
    "encode_cancel_kept",
    "encode_event",
    "encode_flows",
    "encode_list_flows",
    "encode_problem",
    "encode_resume",
    "encode_start",
    "encode_started",
    "failed_event",
    "parse_client_frame",
    "parse_server_frame",
    "text_size_over",
]

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012

#: Longest client stream id accepted; ids are echoed on every frame of the stream.
MAX_ID_LENGTH = 128

#: The subprotocol the server accepts when a client offers it.
SUBPROTOCOL = "llmbrick"
#: A subprotocol carrying an API key, for clients that cannot set headers (browsers).
BEARER_PREFIX = "llmbrick.bearer."

# The one table: why a whole connection ends -> close code and the reason sent with it.
# Reasons are fixed strings so that no exception text ever reaches the client.
_CLOSE: dict[str, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (POLICY_VIOLATION, "too many protocol errors"),
    ErrorCode.PERMISSION_DENIED: (POLICY_VIOLATION, "permission denied"),
    ErrorCode.UNAUTHENTICATED: (POLICY_VIOLATION, "unauthenticated"),
    ErrorCode.RESOURCE_EXHAUSTED: (MESSAGE_TOO_BIG, "message too big"),
    ErrorCode.UNAVAILABLE: (GOING_AWAY, "server going away"),
    ErrorCode.INTERNAL: (INTERNAL_ERROR, "internal error"),
}

# The reverse, for clients: a close code ending streams that had no terminal event yet.
_CODE_FOR_CLOSE: dict[int, ErrorCode] = {
    POLICY_VIOLATION: ErrorCode.INVALID_ARGUMENT,
    MESSAGE_TOO_BIG: ErrorCode.RESOURCE_EXHAUSTED,
    INTERNAL_ERROR: ErrorCode.INTERNAL,
}


def close_for(code: str) -> tuple[int, str]:
    """The close code and reason that end a connection for a neutral error code."""
    return _CLOSE.get(code, _CLOSE[ErrorCode.INTERNAL])


def code_for_close(close_code: int | None) -> ErrorCode:
    """The neutral error code a client reports for streams cut off by ``close_code``."""
    if close_code is None:
        return ErrorCode.UNAVAILABLE
    return _CODE_FOR_CLOSE.get(close_code, ErrorCode.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Start:
    """A client asks to run a flow; ``request`` may name it in its ``flow`` field."""

    id: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cancel:
    """A client asks to stop one of its streams (``id``), or any stream it may see by the
    server's id (``stream_id``, with its ``token`` if the client has it)."""

    id: str | None
    stream_id: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """A client reads a kept stream again under its own ``id``: after event ``after``."""

    id: str
    stream_id: str
    after: int
    token: str | None = None


@dataclass(frozen=True, slots=True)
class ListFlows:
    """A client asks for the server's flows (no stream id: it is not a stream)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A frame the server cannot act on: what is wrong, and the stream id if it had one."""

    message: str
    id: str | None = None


def bearer_from_subprotocols(offered: list[str]) -> str | None:
    """The API key a client offered as ``llmbrick.bearer.<key>``, if any."""
    for name in offered:
        if name.startswith(BEARER_PREFIX) and len(name) > len(BEARER_PREFIX):
            return name[len(BEARER_PREFIX) :]
    return None


def bearer_subprotocols(key: str) -> list[str]:
    """The subprotocols a client offers to authenticate with ``key`` (no header needed)."""
    return [SUBPROTOCOL, BEARER_PREFIX + key]


def text_size_over(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` bytes in UTF-8, encoding only when it must."""
    if len(text) > limit:
        return True
    # A character is at most 4 bytes, so short texts need no encoding to decide.
    return len(text) * 4 > limit and len(text.encode()) > limit


def _stream_id(frame: dict[str, Any]) -> str | Problem:
    value = frame.get("id")
    if type(value) is not str or not value:
        return Problem('"id" must be a non-empty string')
    if len(value) > MAX_ID_LENGTH:
        return Problem(f'"id" is longer than {MAX_ID_LENGTH} characters')
    return value


def parse_client_frame(text: str) -> Start | Cancel | Resume | ListFlows | Problem:
    """Turn one text frame from a client into a command, or say what is wrong with it."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Problem(f"the frame is not valid JSON (line {exc.lineno}, column {exc.colno})")
    if type(frame) is not dict:
        return Problem(f"the frame must be a JSON object, got {_json_type(frame)}")
    kind = frame.get("type")
    if kind == "flows":
        return ListFlows()
    if kind not in _KINDS:
        if kind is None:
            return Problem(f'the frame has no "type"; use {_KIND_NAMES}')
        return Problem(f"unknown frame type {repr(kind)[:64]}; use {_KIND_NAMES}")
    if kind == "cancel" and "id" not in frame and "streamId" in frame:
        return _cancel_by_server_id(frame)
    stream_id = _stream_id(frame)
    if isinstance(stream_id, Problem):
        return stream_id
    if kind == "cancel":
        return Cancel(stream_id)
    if kind == "resume":
        return _resume(frame, stream_id)
    request = frame.get("request")
    if type(request) is not dict:
        what = "missing" if request is None else f"a JSON {_json_type(request)}"
        return Problem(f'"request" must be a JSON object, got {what}', stream_id)
    return Start(stream_id, request)


_KINDS = ("start", "cancel", "resume")
_KIND_NAMES = '"start", "cancel" or "resume"'


def _cancel_by_server_id(frame: dict[str, Any]) -> Cancel | Problem:
    kept = frame.get("streamId")
    if type(kept) is not str or not kept or len(kept) > MAX_ID_LENGTH:
        return Problem('"streamId" must be the server\'s stream id (a string)')
    token = frame.get("token")
    if token is not None and type(token) is not str:
        return Problem('"token" must be a string')
    return Cancel(None, kept, token)


def _resume(frame: dict[str, Any], stream_id: str) -> Resume | Problem:
    kept = frame.get("streamId")
    if type(kept) is not str or not kept or len(kept) > MAX_ID_LENGTH:
        return Problem('"streamId" must be the server\'s stream id (a string)', stream_id)
    after = frame.get("after", 0)
    if type(after) is str and after.isdigit():
        after = int(after)
    if type(after) is not int or after < 0:
        return Problem(
            '"after" must be the id of the last event received (a number >= 0)', stream_id
        )
    token = frame.get("token")
    if token is not None and type(token) is not str:
        return Problem('"token" must be a string', stream_id)
    return Resume(stream_id, kept, after, token)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def encode_event(stream_id: str, event: Event) -> str:
    """One server frame carrying one event of ``stream_id``.

    Raises:
        TypeError: the event holds something JSON cannot carry (e.g. an integer
            beyond 64 bits); a flow bug that the caller turns into an error event.
    """
    return orjson.dumps({"id": stream_id, "event": event}).decode()


def encode_started(stream_id: str, server_stream_id: str) -> str:
    """The reply to a ``start`` that started: the server's id of the stream, for resuming it."""
    return orjson.dumps({"type": "started", "id": stream_id, "streamId": server_stream_id}).decode()


def encode_flows(flows: list[dict[str, Any]]) -> str:
    """The answer to a ``flows`` frame: each flow's name, description and request schema."""
    return orjson.dumps({"type": "flows", "flows": flows}).decode()


def encode_problem(
    message: str, stream_id: str | None = None, code: str = ErrorCode.INVALID_ARGUMENT.value
) -> str:
    """The frame answering a client frame the server could not act on."""
    error = {"code": code, "message": message}
    frame: dict[str, Any] = {"type": "error", "error": error}
    if stream_id is not None:
        frame["id"] = stream_id
    return orjson.dumps(frame).decode()


def failed_event(error: ErrorInfo, number: int) -> Event:
    """A terminal error event stamped as the runtime stamps it (``number`` is its id)."""
    return {"type": "error", "error": error, "id": str(number), "progress": "ERROR"}


def cancelled_event(number: int) -> Event:
    """The terminal event answering a client's ``cancel``."""
    return failed_event(
        {"code": ErrorCode.CANCELLED.value, "message": "the stream was cancelled by the client"},
        number,
    )


def encode_start(stream_id: str, request: dict[str, Any]) -> str:
    """A client's ``start`` frame."""
    return orjson.dumps({"type": "start", "id": stream_id, "request": request}).decode()


def encode_resume(stream_id: str, kept: str, after: int, token: str | None = None) -> str:
    """A client's ``resume`` frame: read kept stream ``kept`` again after event ``after``."""
    frame: dict[str, Any] = {"type": "resume", "id": stream_id, "streamId": kept, "after": after}
    if token is not None:
        frame["token"] = token
    return orjson.dumps(frame).decode()


def encode_cancel(stream_id: str) -> str:
    """A client's ``cancel`` frame for one of its own streams."""
    return orjson.dumps({"type": "cancel", "id": stream_id}).decode()


def encode_cancel_kept(kept: str, token: str | None = None) -> str:
    """A client's ``cancel`` frame for a stream by the server's id (one it may not read)."""
    frame: dict[str, Any] = {"type": "cancel", "streamId": kept}
    if token is not None:
        frame["token"] = token
    return orjson.dumps(frame).decode()


def encode_list_flows() -> str:
    """A client's ``flows`` frame, asking for the server's flows."""
    return '{"type":"flows"}'


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """A frame from the server: an event of stream ``id``, an ``error`` about a frame,
    the ``started`` reply carrying the server's stream id, or the ``flows`` answer."""

    id: str | None
    event: Event | None = None
    error: ErrorInfo | None = None
    stream_id: str | None = None
    flows: list[dict[str, Any]] | None = None


def parse_server_frame(data: str | bytes) -> ServerFrame:
    """Decode one frame from the server.

    Raises:
        ValueError: the frame is not one the protocol defines.
    """
    frame = orjson.loads(data)
    if type(frame) is not dict:
        raise ValueError("a server frame must be a JSON object")
    stream_id = frame.get("id")
    if stream_id is not None and type(stream_id) is not str:
        raise ValueError('a server frame\'s "id" must be a string')
    event = frame.get("event")
    if type(event) is dict and stream_id is not None:
        return ServerFrame(stream_id, event=event)  # type: ignore[arg-type]
    error = frame.get("error")
    if frame.get("type") == "error" and type(error) is dict:
        return ServerFrame(stream_id, error=error)  # type: ignore[arg-type]
    server_id = frame.get("streamId")
    if frame.get("type") == "started" and stream_id is not None and type(server_id) is str:
        return ServerFrame(stream_id, stream_id=server_id)
    flows = frame.get("flows")
    if frame.get("type") == "flows" and type(flows) is list:
        return ServerFrame(None, flows=flows)
    raise ValueError("a server frame needs an id and an event, or type 'error'")
