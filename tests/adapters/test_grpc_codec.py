"""The gRPC codec without a network: lossless events and requests, the status table."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llmbrick import (
    DeadlineExceeded,
    ErrorCode,
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
)
from llmbrick_grpc import (
    code_for,
    decode_event,
    decode_request,
    encode_event,
    encode_request,
    status_for,
)
from llmbrick_grpc.codec import (
    ERROR_METADATA_KEY,
    error_from_metadata,
    error_metadata,
)
from llmbrick_grpc.errors import exception_for
from llmbrick_grpc.stubs import event_pb2, flow_pb2

EVENTS: list[dict[str, Any]] = [
    {"type": "text", "text": "hello ", "model": "echo", "id": "1", "progress": "IN_PROGRESS"},
    {"type": "text", "text": "", "id": "2", "progress": "IN_PROGRESS"},
    {"type": "done", "id": "9", "progress": "DONE"},
    {
        "type": "data",
        "data": {
            "int": 3,
            "float": 3.0,
            "big": 2**62,
            "neg": -1,
            "ratio": 0.1,
            "exp": 1e300,
            "bool": True,
            "none": None,
            "unicode": 'héllo ✓ 𝄞 \u0000 \n"',
            "nested": {"list": [1, 2.5, [3, {"x": []}], {}], "empty": ""},
        },
        "id": "3",
        "progress": "IN_PROGRESS",
    },
    {"type": "meta", "metadata": {"intent": "greet", "confidence": 1}, "id": "4"},
    {"type": "citation", "data": {"url": "https://example.org/é"}, "custom": [1, "two", 3.5]},
    {"type": "text", "text": "t", "context": {"conversationId": "c-1", "cursor": "42"}},
    {"type": "text", "context": {"conversationId": "c-1"}},
    {"type": "text", "context": {}},
    {"type": "text", "context": {"cursor": 7}},
    {"type": "text", "context": {"cursor": "7", "other": True}},
    {
        "type": "error",
        "error": {"code": "INVALID_ARGUMENT", "message": "bad", "details": [{"loc": "a.b"}]},
        "id": "5",
        "progress": "ERROR",
    },
    {"type": "error", "error": {"code": "INTERNAL", "message": "x"}, "progress": "ERROR"},
    {"type": "error", "error": {"code": "X", "message": "m", "details": None}},
    {"type": "error", "error": {"code": "X", "message": "m", "extra": 1}},
    {"type": "x", "error": "not an object"},
    # Values a typed field cannot hold exactly stay exact through extra_json.
    {"type": "text", "text": 5, "model": None, "id": 7, "progress": "LATER"},
    {"type": "", "text": "empty type"},
    {"text": "no type at all"},
    {"type": "text", "extra_json": "a key named like the carrier"},
]


@pytest.mark.parametrize("event", EVENTS)
def test_events_round_trip_exactly(event: dict[str, Any]) -> None:
    wire = encode_event(event).SerializeToString()
    back = decode_event(event_pb2.Event.FromString(wire))
    assert back == event
    assert set(back) == set(event)
    assert _types(back) == _types(event)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__


def test_common_event_fields_are_typed_not_json() -> None:
    message = encode_event(EVENTS[0])
    typed = (message.type, message.text, message.model, message.id)
    assert typed == ("text", "hello ", "echo", "1")
    assert message.progress == event_pb2.PROGRESS_IN_PROGRESS
    assert message.extra_json == ""
    error = encode_event(EVENTS[11])
    assert error.error.code == "INVALID_ARGUMENT" and error.error.details_json == '[{"loc":"a.b"}]'
    assert error.extra_json == ""
    data = encode_event(EVENTS[3])
    assert data.extra_json.startswith('{"data":{"int":3,"float":3.0,')


def test_tuples_arrive_as_lists_like_json() -> None:
    assert decode_event(encode_event({"type": "data", "data": {"t": (1, 2)}})) == {
        "type": "data",
        "data": {"t": [1, 2]},
    }


def test_values_json_cannot_carry_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_event({"type": "data", "data": {"when": object()}})
    with pytest.raises(TypeError, match="64-bit"):  # orjson's limit, the same as over SSE
        encode_event({"type": "data", "data": {"n": 2**64}})


def test_a_key_both_typed_and_in_extra_json_is_refused() -> None:
    message = event_pb2.Event(type="text", text="a", extra_json='{"text": "b"}')
    with pytest.raises(ValueError, match="'text' is also given as a typed field"):
        decode_event(message)


REQUESTS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi"}]},
    {
        "flow": "chat",
        "model": "m",
        "messages": [
            {"role": "system", "content": ""},
            {"role": "tool", "content": "r", "name": "n", "toolCallId": "t"},
        ],
        "sessionId": "s",
        "clientId": "c",
        "temperature": 0.7,
        "maxTokens": 256,
        "sourceLanguage": "zh",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "toolChoice": "auto",
        "metadata": {"n": 1, "f": 1.0},
        "stream": False,
    },
    # snake_case spellings, ints where floats go, and odd shapes ride in extra_json.
    {"messages": [{"role": "user", "content": "x"}], "session_id": "s", "max_tokens": 5},
    {"messages": [], "temperature": 1, "maxTokens": True, "model": None},
    {"messages": [{"role": "user", "content": "x"}], "maxTokens": 1.0, "temperature": "hot"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "multi"}]}]},
    {"messages": [{"role": "user", "content": "x", "tool_call_id": "t"}]},
    {"query": "custom model", "top_k": 3, "flow": "search"},
    {},
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_requests_round_trip_exactly(request_: dict[str, Any]) -> None:
    wire = encode_request(request_).SerializeToString()
    back = decode_request(flow_pb2.StreamRequest.FromString(wire))
    assert back == request_
    assert _types(back) == _types(request_)


def test_common_request_fields_are_typed() -> None:
    message = encode_request(REQUESTS[1])
    assert message.flow == "chat" and message.session_id == "s" and message.max_tokens == 256
    assert message.temperature == 0.7 and message.source_language == "zh"
    assert [m.role for m in message.messages] == ["system", "tool"]
    assert message.messages[1].tool_call_id == "t"
    assert set(decode_request(flow_pb2.StreamRequest(extra_json=message.extra_json))) == {
        "tools",
        "toolChoice",
        "metadata",
        "stream",
    }


def test_a_foreign_client_can_fill_only_typed_fields() -> None:
    message = flow_pb2.StreamRequest(
        flow="default", messages=[flow_pb2.Message(role="user", content="hi")], max_tokens=3
    )
    assert decode_request(message) == {
        "flow": "default",
        "messages": [{"role": "user", "content": "hi"}],
        "maxTokens": 3,
    }


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("{", "extra_json: malformed JSON"),
        ("[]", "extra_json: must be a JSON object, got list"),
        ('{"flow": "b"}', "'flow' is also given as a typed field"),
    ],
)
def test_bad_extra_json_in_a_request_is_a_value_error(extra: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        decode_request(flow_pb2.StreamRequest(flow="a", extra_json=extra))


def test_every_neutral_code_has_the_grpc_status_of_the_same_name() -> None:
    for code in ErrorCode:
        status = status_for(code)
        assert status.name == code.value
        assert code_for(status) == code.value
    assert status_for("QUOTA") is grpc.StatusCode.UNKNOWN
    assert code_for(grpc.StatusCode.UNKNOWN) == "INTERNAL"
    assert code_for(grpc.StatusCode.DATA_LOSS) == "INTERNAL"


def test_errors_survive_the_trailing_metadata() -> None:
    error = {"code": "INVALID_ARGUMENT", "message": "bad ✓", "details": [{"loc": "x", "n": 1}]}
    metadata = error_metadata(error)
    assert metadata[0][0] == ERROR_METADATA_KEY
    assert error_from_metadata([("other", "v"), *metadata]) == error
    assert error_from_metadata(None) is None
    assert error_from_metadata([(ERROR_METADATA_KEY, b"\xff garbage")]) is None


@pytest.mark.parametrize(
    ("info", "cls"),
    [
        ({"code": "NOT_FOUND", "message": "m"}, FlowNotFound),
        ({"code": "INVALID_ARGUMENT", "message": "m", "details": [1]}, InvalidRequest),
        ({"code": "PERMISSION_DENIED", "message": "m"}, PermissionDenied),
        ({"code": "DEADLINE_EXCEEDED", "message": "m"}, DeadlineExceeded),
        ({"code": "RESOURCE_EXHAUSTED", "message": "m", "details": {"retryAfter": 2}}, Overloaded),
        ({"code": "FAILED_PRECONDITION", "message": "m"}, LLMBrickError),
        ({"code": "QUOTA", "message": "m"}, LLMBrickError),
    ],
)
def test_errors_become_the_matching_exception(info: dict[str, Any], cls: type) -> None:
    exc = exception_for(info)  # type: ignore[arg-type]
    assert type(exc) is cls
    assert exc.message == "m"
    if info["code"] in {c.value for c in ErrorCode}:
        assert exc.code.value == info["code"]
    else:
        assert exc.code is ErrorCode.INTERNAL and exc.details == {"code": "QUOTA", "details": None}
    if cls is Overloaded:
        assert exc.retry_after == 2  # type: ignore[attr-defined]
