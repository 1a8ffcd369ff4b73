"""The WebSocket codec's pure functions."""

from __future__ import annotations

import orjson
import pytest

from llmbrick import ErrorCode, Event
from llmbrick_websocket.codec import (
    Cancel,
    Problem,
    ServerFrame,
    Start,
    cancelled_event,
    close_for,
    code_for_close,
    encode_cancel,
    encode_event,
    encode_problem,
    encode_start,
    parse_client_frame,
    parse_server_frame,
    text_size_over,
)


def test_client_frames_become_commands() -> None:
    start = parse_client_frame('{"type":"start","id":"7","request":{"flow":"f"}}')
    assert start == Start("7", {"flow": "f"})
    assert parse_client_frame('{"type":"cancel","id":"7"}') == Cancel("7")
    assert parse_client_frame(encode_start("a", {"x": 1})) == Start("a", {"x": 1})
    assert parse_client_frame(encode_cancel("a")) == Cancel("a")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "",
            Problem("the frame is not valid JSON (line 1, column 1)"),
        ),
        ("null", Problem("the frame must be a JSON object, got null")),
        ("true", Problem("the frame must be a JSON object, got boolean")),
        (
            '{"type": 1, "id": "a"}',
            Problem('unknown frame type 1; use "start", "cancel" or "resume"'),
        ),
        ('{"type":"start","id":"","request":{}}', Problem('"id" must be a non-empty string')),
        (
            '{"type":"start","id":"a","request":[]}',
            Problem('"request" must be a JSON object, got a JSON array', "a"),
        ),
    ],
)
def test_malformed_client_frames_are_problems(text: str, expected: Problem) -> None:
    assert parse_client_frame(text) == expected


def test_event_frames_wrap_the_event_untouched() -> None:
    event: Event = {"type": "text", "text": 'é\n"', "id": "3", "progress": "IN_PROGRESS"}
    frame = encode_event("s", event)
    assert orjson.loads(frame) == {"id": "s", "event": event}
    assert parse_server_frame(frame) == ServerFrame("s", event=event)
    with pytest.raises(TypeError):
        encode_event("s", {"type": "data", "data": {"s": "\ud800"}})


def test_problem_frames_carry_invalid_argument_and_the_id_when_known() -> None:
    assert orjson.loads(encode_problem("bad")) == {
        "type": "error",
        "error": {"code": "INVALID_ARGUMENT", "message": "bad"},
    }
    frame = parse_server_frame(encode_problem("bad", "x"))
    assert frame == ServerFrame("x", error={"code": "INVALID_ARGUMENT", "message": "bad"})
    with pytest.raises(ValueError):
        parse_server_frame('{"id": "x"}')


def test_cancelled_event_is_a_stamped_terminal_error() -> None:
    assert cancelled_event(4) == {
        "type": "error",
        "error": {"code": "CANCELLED", "message": "the stream was cancelled by the client"},
        "id": "4",
        "progress": "ERROR",
    }


def test_close_codes_map_both_ways() -> None:
    assert close_for(ErrorCode.INVALID_ARGUMENT) == (1008, "too many protocol errors")
    assert close_for(ErrorCode.RESOURCE_EXHAUSTED) == (1009, "message too big")
    assert close_for(ErrorCode.INTERNAL) == (1011, "internal error")
    assert close_for("SOMETHING_NEW") == (1011, "internal error")
    for code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.INTERNAL):
        assert code_for_close(close_for(code)[0]) is code
    assert code_for_close(1000) is ErrorCode.UNAVAILABLE
    assert code_for_close(None) is ErrorCode.UNAVAILABLE


def test_size_is_measured_in_utf8_bytes() -> None:
    assert not text_size_over("a" * 1024, 1024)
    assert text_size_over("a" * 1025, 1024)
    assert not text_size_over("€" * 341, 1024)  # 1023 bytes
    assert text_size_over("€" * 342, 1024)  # 1026 bytes, in 342 characters
