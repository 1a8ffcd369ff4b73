"""Pure gRPC encoding: event and request dicts to protobuf and back, error codes to statuses.

Losslessness is the rule: a value goes into a typed field only when the field
can give back exactly that value (a ``str`` for a string field, an ``int``
for ``maxTokens``, a ``float`` for ``temperature``); anything else travels
in the message's ``extra_json`` object. Decoding rebuilds the same dict, key
for key, with integers still integers. No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc
import orjson

from llmbrick import ErrorCode, ErrorInfo, Event

from ._generated import brick_pb2, event_pb2, flow_pb2

__all__ = [
    "ERROR_METADATA_KEY",
    "RETRY_PUSHBACK_KEY",
    "code_for",
    "decode_brick_info",
    "decode_error",
    "decode_event",
    "decode_flow_info",
    "decode_request",
    "encode_brick_info",
    "encode_error",
    "encode_event",
    "encode_flow_info",
    "encode_request",
    "error_from_metadata",
    "error_metadata",
    "status_for",
]

#: Trailing metadata key carrying a serialized ``llmbrick.v1.Error`` on every failed call.
ERROR_METADATA_KEY = "llmbrick-error-bin"

#: Trailing metadata key with the retry delay of a RESOURCE_EXHAUSTED call, in milliseconds:
#: where gRPC clients look (a retry policy in a service config waits that long, in any language).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

# The one table from neutral codes to gRPC statuses; the names match by design.
_STATUS: dict[str, grpc.StatusCode] = {
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}
_CODE: dict[grpc.StatusCode, str] = {status: code for code, status in _STATUS.items()}


def status_for(code: str) -> grpc.StatusCode:
    """The gRPC status for a neutral error code (``UNKNOWN`` for a code a flow made up)."""
    return _STATUS.get(code, grpc.StatusCode.UNKNOWN)


def code_for(status: grpc.StatusCode) -> str:
    """The neutral error code for a gRPC status (``INTERNAL`` for ``UNKNOWN`` and ``DATA_LOSS``)."""
    return _CODE.get(status, ErrorCode.INTERNAL.value)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}: malformed JSON: {exc}") from None
    if type(value) is not dict:
        raise ValueError(f"{where}: must be a JSON object, got {type(value).__name__}")
    return cast(dict[str, Any], value)


# -- errors -------------------------------------------------------------------------------


def encode_error(
    error: Mapping[str, Any], message: event_pb2.Error | None = None
) -> event_pb2.Error:
    """Fill ``message`` (or a new one) from an ``error`` object ``{code, message, details?}``."""
    out = event_pb2.Error() if message is None else message
    out.code = error["code"]
    out.message = error["message"]
    if "details" in error:
        out.details_json = _dumps(error["details"])
    return out


def decode_error(message: event_pb2.Error) -> ErrorInfo:
    """The ``error`` object of an event from its protobuf form."""
    error: ErrorInfo = {"code": message.code, "message": message.message}
    if message.HasField("details_json"):
        error["details"] = orjson.loads(message.details_json)
    return error


def _fits_error(value: dict[str, Any]) -> bool:
    return (
        type(value.get("code")) is str
        and type(value.get("message")) is str
        and value.keys() <= {"code", "message", "details"}
    )


def error_metadata(error: Mapping[str, Any]) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata carrying ``error`` in full (its details survive the status line).

    A ``RESOURCE_EXHAUSTED`` error with ``retryAfter`` seconds in its details also
    carries :data:`RETRY_PUSHBACK_KEY`, so stock gRPC clients wait as long too.
    """
    encoded = (ERROR_METADATA_KEY, encode_error(error).SerializeToString())
    if error["code"] == ErrorCode.RESOURCE_EXHAUSTED:
        details = error.get("details")
        retry = details.get("retryAfter") if isinstance(details, Mapping) else None
        if isinstance(retry, int | float) and not isinstance(retry, bool) and retry >= 0:
            return encoded, (RETRY_PUSHBACK_KEY, str(round(retry * 1000)))
    return (encoded,)


def error_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> ErrorInfo | None:
    """The error a server put in trailing metadata, or ``None`` if there is none."""
    for key, value in metadata or ():
        if key == ERROR_METADATA_KEY and isinstance(value, bytes):
            try:
                return decode_error(event_pb2.Error.FromString(value))
            except Exception:
                return None
    return None


# -- events -------------------------------------------------------------------------------

_PROGRESS: dict[str, int] = {
    "IN_PROGRESS": event_pb2.PROGRESS_IN_PROGRESS,
    "DONE": event_pb2.PROGRESS_DONE,
    "ERROR": event_pb2.PROGRESS_ERROR,
}
_PROGRESS_NAME: dict[int, str] = {number: name for name, number in _PROGRESS.items()}
_CONTEXT_KEYS = frozenset({"conversationId", "cursor"})


def _fits_context(value: dict[str, Any]) -> bool:
    return value.keys() <= _CONTEXT_KEYS and all(type(item) is str for item in value.values())


def encode_event(
    event: Mapping[str, Any], message: event_pb2.Event | None = None
) -> event_pb2.Event:
    """Fill ``message`` (or a new one) from an event dict.

    Args:
        event: the event; any JSON-serialisable values.
        message: an empty message to fill, e.g. ``response.events.add()``.

    Returns:
        The filled message.

    Raises:
        TypeError: a value outside the typed fields is not JSON-serialisable.
    """
    out = event_pb2.Event() if message is None else message
    extra: dict[str, Any] | None = None
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            if key == "text":
                out.text = value
                continue
            if key == "type":
                if value:
                    out.type = value
                    continue
            elif key == "id":
                out.id = value
                continue
            elif key == "progress":
                progress = _PROGRESS.get(value)
                if progress is not None:
                    out.progress = progress  # type: ignore[assignment]
                    continue
            elif key == "model":
                out.model = value
                continue
        elif kind is dict:
            if key == "error" and _fits_error(value):
                encode_error(value, out.error)
                continue
            if key == "context" and _fits_context(value):
                context = out.context
                context.SetInParent()
                if "conversationId" in value:
                    context.conversation_id = value["conversationId"]
                if "cursor" in value:
                    context.cursor = value["cursor"]
                continue
        if extra is None:
            extra = {}
        extra[key] = value
    if extra:
        out.extra_json = _dumps(extra)
    return out


def decode_event(message: event_pb2.Event) -> Event:
    """The event dict a message carries (exactly the keys that were encoded).

    Raises:
        ValueError: ``extra_json`` is malformed or repeats a typed field.
    """
    event: dict[str, Any] = {}
    extra_json = ""
    for field, value in message.ListFields():
        name = field.name
        if name == "progress":
            event["progress"] = _PROGRESS_NAME.get(value, "IN_PROGRESS")
        elif name == "error":
            event["error"] = decode_error(value)
        elif name == "context":
            context: dict[str, str] = {}
            if value.HasField("conversation_id"):
                context["conversationId"] = value.conversation_id
            if value.HasField("cursor"):
                context["cursor"] = value.cursor
            event["context"] = context
        elif name == "extra_json":
            extra_json = value
        else:
            event[name] = value
    if extra_json:
        _merge(event, _loads_object(extra_json, "event.extra_json"), "event")
    return cast(Event, event)


def _merge(target: dict[str, Any], extra: dict[str, Any], what: str) -> None:
    for key in extra:
        if key in target:
            raise ValueError(f"{what}.extra_json: {key!r} is also given as a typed field")
    target.update(extra)


# -- requests -----------------------------------------------------------------------------

# Request key -> StreamRequest string field.
_REQUEST_STRINGS: dict[str, str] = {
    "flow": "flow",
    "model": "model",
    "sessionId": "session_id",
    "clientId": "client_id",
    "sourceLanguage": "source_language",
}
_REQUEST_KEYS: dict[str, str] = {field: key for key, field in _REQUEST_STRINGS.items()}
_REQUEST_KEYS.update({"temperature": "temperature", "max_tokens": "maxTokens"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "toolCallId"})
_INT64 = (-(2**63), 2**63 - 1)


def _fits_messages(value: list[Any]) -> bool:
    if not value:
        return False  # an empty list has no presence in a repeated field
    for item in value:
        if type(item) is not dict or not item.keys() <= _MESSAGE_KEYS:
            return False
        if type(item.get("role")) is not str or type(item.get("content")) is not str:
            return False
        for key in ("name", "toolCallId"):
            if key in item and type(item[key]) is not str:
                return False
    return True


def encode_request(request: Mapping[str, Any]) -> flow_pb2.StreamRequest:
    """The ``StreamRequest`` for a request dict (what an SSE client would POST).

    Raises:
        TypeError: a value outside the typed fields is not JSON-serialisable.
    """
    out = flow_pb2.StreamRequest()
    extra: dict[str, Any] = {}
    for key, value in request.items():
        kind = type(value)
        field = _REQUEST_STRINGS.get(key)
        if field is not None and kind is str:
            setattr(out, field, value)
        elif key == "messages" and kind is list and _fits_messages(value):
            for item in value:
                message = out.messages.add(role=item["role"], content=item["content"])
                if "name" in item:
                    message.name = item["name"]
                if "toolCallId" in item:
                    message.tool_call_id = item["toolCallId"]
        elif key == "temperature" and kind is float:
            out.temperature = value
        elif key == "maxTokens" and kind is int and _INT64[0] <= value <= _INT64[1]:
            out.max_tokens = value
        else:
            extra[key] = value
    if extra:
        out.extra_json = _dumps(extra)
    return out


def decode_request(message: flow_pb2.StreamRequest) -> dict[str, Any]:
    """The request dict a ``StreamRequest`` carries.

    Raises:
        ValueError: ``extra_json`` is malformed, not an object, or repeats a typed field.
    """
    request: dict[str, Any] = {}
    extra_json = ""
    for field, value in message.ListFields():
        name = field.name
        if name == "messages":
            messages = []
            for item in value:
                entry = {"role": item.role, "content": item.content}
                if item.HasField("name"):
                    entry["name"] = item.name
                if item.HasField("tool_call_id"):
                    entry["toolCallId"] = item.tool_call_id
                messages.append(entry)
            request["messages"] = messages
        elif name == "extra_json":
            extra_json = value
        else:
            request[_REQUEST_KEYS[name]] = value
    if extra_json:
        _merge(request, _loads_object(extra_json, "extra_json"), "request")
    return request


# -- listings -----------------------------------------------------------------------------


def encode_flow_info(description: Mapping[str, Any]) -> flow_pb2.FlowInfo:
    """A ``FlowInfo`` from one item of ``FlowRegistry.describe()``."""
    return flow_pb2.FlowInfo(
        name=description["name"],
        description=description.get("description", ""),
        request_schema_json=_dumps(description.get("requestSchema", {})),
    )


def decode_flow_info(message: flow_pb2.FlowInfo) -> dict[str, Any]:
    """The ``{name, description, requestSchema}`` dict a ``FlowInfo`` carries."""
    return {
        "name": message.name,
        "description": message.description,
        "requestSchema": orjson.loads(message.request_schema_json or "{}"),
    }


def encode_brick_info(info: Mapping[str, Any]) -> brick_pb2.BrickInfo:
    """A ``BrickInfo`` from ``Brick.info()``."""
    return brick_pb2.BrickInfo(
        name=info["name"],
        kind=info["kind"],
        version=info["version"],
        description=info["description"],
        mode=info["mode"],
        input_model=info["inputModel"],
        output_model=info["outputModel"],
        input_schema_json=_dumps(info["inputSchema"]),
        output_schema_json=_dumps(info["outputSchema"]),
    )


def decode_brick_info(message: brick_pb2.BrickInfo) -> dict[str, Any]:
    """The ``Brick.info()`` dict a ``BrickInfo`` carries."""
    return {
        "name": message.name,
        "kind": message.kind,
        "version": message.version,
        "description": message.description,
        "mode": message.mode,
        "inputModel": message.input_model,
        "outputModel": message.output_model,
        "inputSchema": orjson.loads(message.input_schema_json or "{}"),
        "outputSchema": orjson.loads(message.output_schema_json or "{}"),
    }
