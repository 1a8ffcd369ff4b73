"""The SSE codec: pure functions, no server."""

from __future__ import annotations

import pytest

from llmbrick import ErrorCode
from llmbrick_sse import encode_event, error_body, status_for
from llmbrick_sse.codec import accepts_event_stream, accepts_json, is_json_content_type


def test_encode_event_frames_compact_json() -> None:
    event = {"type": "text", "text": "é\n", "id": "7", "progress": "IN_PROGRESS"}
    assert encode_event(event) == (  # type: ignore[arg-type]
        b'id: 7\nevent: message\ndata: {"type":"text","text":"\xc3\xa9\\n","id":"7",'
        b'"progress":"IN_PROGRESS"}\n\n'
    )


def test_error_events_use_the_error_event_name() -> None:
    event = {"type": "error", "error": {"code": "X", "message": "m"}, "id": "2"}
    assert encode_event(event).startswith(b"id: 2\nevent: error\n")  # type: ignore[arg-type]


def test_encoding_does_not_mutate_the_event() -> None:
    event = {"type": "text", "text": "a", "id": "1", "progress": "IN_PROGRESS"}
    copy = dict(event)
    encode_event(event)  # type: ignore[arg-type]
    assert event == copy


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.INVALID_ARGUMENT, 422),
        (ErrorCode.NOT_FOUND, 404),
        (ErrorCode.PERMISSION_DENIED, 403),
        (ErrorCode.UNAUTHENTICATED, 401),
        (ErrorCode.RESOURCE_EXHAUSTED, 503),
        (ErrorCode.UNAVAILABLE, 503),
        (ErrorCode.DEADLINE_EXCEEDED, 504),
        (ErrorCode.INTERNAL, 500),
        ("SOMETHING_NEW", 500),
    ],
)
def test_status_table(code: str, status: int) -> None:
    assert status_for(code) == status


def test_error_body() -> None:
    assert error_body({"code": "NOT_FOUND", "message": "m"}) == (
        b'{"error":{"code":"NOT_FOUND","message":"m"}}'
    )


def test_header_checks() -> None:
    assert accepts_event_stream(None) and accepts_event_stream(" ")
    assert accepts_event_stream("Text/Event-Stream; charset=utf-8")
    assert not accepts_event_stream("application/json")
    assert accepts_json("application/problem+json")
    assert not accepts_json("text/event-stream")
    assert is_json_content_type(None)
    assert is_json_content_type("Application/JSON; charset=utf-8")
    assert is_json_content_type("application/vnd.api+json")
    assert not is_json_content_type("text/plain")
    assert not is_json_content_type("application/x-www-form-urlencoded")
