"""Event constructors, the event check, and the error tree."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from llmbrick import (
    Cancelled,
    DeadlineExceeded,
    ErrorCode,
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    data_event,
    done_event,
    error_event,
    meta_event,
    text_event,
)
from llmbrick.events import event_problem


def test_constructors_build_plain_dicts() -> None:
    assert text_event("hi") == {"type": "text", "text": "hi"}
    assert text_event("hi", model="m") == {"type": "text", "text": "hi", "model": "m"}
    assert meta_event({"a": 1}) == {"type": "meta", "metadata": {"a": 1}}
    assert data_event({"a": 1}) == {"type": "data", "data": {"a": 1}}
    assert data_event({"a": 1}, type="tool_call") == {"type": "tool_call", "data": {"a": 1}}
    assert done_event() == {"type": "done"}
    assert error_event("NOT_FOUND", "x") == {
        "type": "error",
        "error": {"code": "NOT_FOUND", "message": "x"},
    }
    assert error_event("X", "y", [1])["error"]["details"] == [1]


@pytest.mark.parametrize(
    "event",
    [
        text_event("hi"),
        {"type": "custom-thing", "data": {"n": 1, "f": 1.5, "b": True, "z": None, "l": [1, "a"]}},
        {"type": "text", "data": {"tuple": (1, 2)}},
        error_event("INTERNAL", "x"),
    ],
)
def test_well_formed_events_pass(event: Any) -> None:
    assert event_problem(event) is None


def test_error_codes_and_classes() -> None:
    cases: list[tuple[LLMBrickError, ErrorCode]] = [
        (InvalidRequest("x"), ErrorCode.INVALID_ARGUMENT),
        (FlowNotFound("x"), ErrorCode.NOT_FOUND),
        (Overloaded("x"), ErrorCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("x"), ErrorCode.DEADLINE_EXCEEDED),
        (PermissionDenied("x"), ErrorCode.PERMISSION_DENIED),
        (Unauthenticated("x"), ErrorCode.UNAUTHENTICATED),
        (Unavailable("x"), ErrorCode.UNAVAILABLE),
        (Cancelled("x"), ErrorCode.CANCELLED),
        (LLMBrickError("x"), ErrorCode.INTERNAL),
        (LLMBrickError("x", code="NOT_FOUND"), ErrorCode.NOT_FOUND),
    ]
    for exc, code in cases:
        assert exc.code is code
        assert exc.to_info()["code"] == code.value
    with pytest.raises(ValueError):
        LLMBrickError("x", code="NOT_A_CODE")


def test_invalid_request_from_a_validation_error_keeps_paths() -> None:
    class M(BaseModel):
        a: int
        b: list[int]

    try:
        M.model_validate({"a": "x", "b": [1, "y"]})
    except Exception as exc:
        error = InvalidRequest.from_validation_error(exc)  # type: ignore[arg-type]
    assert error.message.startswith("invalid request: a: ")
    assert error.message.endswith("(and 1 more)")
    assert [d["loc"] for d in error.details] == ["a", "b.1"]
