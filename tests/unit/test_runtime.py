"""FlowRuntime: validation, stamping, the terminal-event rule, errors, limits, cancellation."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from llmbrick import (
    ChatRequest,
    DeadlineExceeded,
    ErrorCode,
    Event,
    FlowNotFound,
    FlowRegistry,
    FlowRuntime,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unavailable,
)

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def make_runtime(*flows: tuple[str, Any], **options: Any) -> FlowRuntime:
    registry = FlowRegistry()
    for name, flow in flows:
        registry.register(name, flow)
    return FlowRuntime(registry, **options)


async def collect(runtime: FlowRuntime, name: str | None, payload: Any = HELLO) -> list[Event]:
    return [event async for event in runtime.run(name, payload)]


async def two_texts(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}
    yield {"type": "text", "text": "b"}


async def test_events_are_stamped_and_a_done_event_is_synthesised() -> None:
    events = await collect(make_runtime(("default", two_texts)), None)
    assert events == [
        {"type": "text", "text": "a", "id": "1", "progress": "IN_PROGRESS"},
        {"type": "text", "text": "b", "id": "2", "progress": "IN_PROGRESS"},
        {"type": "done", "id": "3", "progress": "DONE"},
    ]


async def test_flow_name_comes_from_the_payload() -> None:
    runtime = make_runtime(("other", two_texts))
    events = await collect(runtime, None, {**HELLO, "flow": "other"})
    assert events[-1]["type"] == "done"


async def test_flow_receives_the_validated_request_model() -> None:
    seen: list[object] = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        seen.append(request)
        yield {"type": "text", "text": request.messages[0].content}

    await collect(make_runtime(("default", flow)), None, {**HELLO, "max_tokens": 5})
    assert isinstance(seen[0], ChatRequest)
    assert seen[0].max_tokens == 5


async def test_a_done_event_from_the_flow_ends_the_stream_and_closes_the_flow() -> None:
    closed = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "done", "metadata": {"n": 1}}
            yield {"type": "text", "text": "never delivered"}
        finally:
            closed.append(True)

    events = await collect(make_runtime(("default", flow)), None)
    assert events == [{"type": "done", "metadata": {"n": 1}, "id": "1", "progress": "DONE"}]
    assert closed == [True]


async def test_an_error_event_from_the_flow_is_terminal() -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "x"}
        yield {"type": "error", "error": {"code": "PERMISSION_DENIED", "message": "no"}}
        yield {"type": "text", "text": "never"}

    events = await collect(make_runtime(("default", flow)), None)
    assert [e["type"] for e in events] == ["text", "error"]
    assert events[-1]["progress"] == "ERROR"
    assert events[-1]["id"] == "2"


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("just a string", "must yield event dicts, got str"),
        ({"text": "no type"}, "non-empty string 'type'"),
        ({"type": ""}, "non-empty string 'type'"),
        ({"type": "Text"}, "lowercase"),
        ({"type": "text", "data": {"when": object()}}, "event.data.when is a object"),
        ({"type": "text", "data": {1: "x"}}, "non-string key"),
        ({"type": "text", "data": {"x": float("nan")}}, "JSON cannot carry"),
        ({"type": "text", "data": {"n": [2**70]}}, "event.data.n[0] is an integer beyond 64 bits"),
        ({"type": "text", "text": "bad \ud800"}, "event.text has a lone surrogate"),
        ({"type": "text", "data": {"l": ["ok é", "\udfff"]}}, "event.data.l[1] has a lone"),
        ({"type": "error"}, "error.code and error.message"),
        ({"type": "text", "data": [[[[[]]]]] * 1}, None),
    ],
)
async def test_a_malformed_event_ends_the_stream_with_an_error_naming_it(
    bad: Any, fragment: str | None
) -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Any]:
        yield {"type": "text", "text": "ok"}
        yield bad

    events = await collect(make_runtime(("default", flow)), None)
    if fragment is None:  # a well-formed nested event passes
        assert events[-1]["type"] == "done"
        return
    assert [e["type"] for e in events] == ["text", "error"]
    error = events[-1]["error"]
    assert error["code"] == "INTERNAL"
    assert fragment in error["message"]


async def test_too_deep_nesting_is_rejected() -> None:
    deep: Any = []
    for _ in range(40):
        deep = [deep]

    async def flow(request: ChatRequest) -> AsyncIterator[Any]:
        yield {"type": "text", "data": {"x": deep}}

    events = await collect(make_runtime(("default", flow)), None)
    assert "deeper than 32" in events[-1]["error"]["message"]


async def test_an_expected_error_keeps_its_code_message_and_details() -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "a"}
        raise PermissionDenied("not for you", details={"why": "policy"})

    events = await collect(make_runtime(("default", flow)), None)
    assert events[-1] == {
        "type": "error",
        "error": {
            "code": "PERMISSION_DENIED",
            "message": "not for you",
            "details": {"why": "policy"},
        },
        "id": "2",
        "progress": "ERROR",
    }


async def test_a_crash_hides_internal_text_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        raise RuntimeError("secret database password in here")
        yield {"type": "text", "text": "unreachable"}

    with caplog.at_level(logging.ERROR, logger="llmbrick"):
        events = await collect(make_runtime(("default", flow)), None)
    error = events[-1]["error"]
    assert error["code"] == "INTERNAL"
    assert "secret" not in error["message"]
    # The stream id lets the operator find the log line, and reveals no request counter.
    assert re.search(r"\(stream [A-Za-z0-9_-]{16}\)", error["message"]), error["message"]
    assert "secret database password" in caplog.text


async def test_debug_mode_sends_the_exception_text() -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        raise RuntimeError("kaboom")
        yield {"type": "text", "text": "unreachable"}

    events = await collect(make_runtime(("default", flow), debug=True), None)
    assert events[-1]["error"]["message"] == "RuntimeError: kaboom"


async def test_unknown_flow_and_invalid_request_raise_before_the_stream() -> None:
    runtime = make_runtime(("default", two_texts))
    with pytest.raises(FlowNotFound, match="known flows: 'default'"):
        runtime.start("nope", HELLO)
    with pytest.raises(InvalidRequest) as caught:
        runtime.start(None, {"messages": [{"role": "robot", "content": "x"}], "maxTokens": 0})
    locs = [d["loc"] for d in caught.value.details]
    assert locs == ["messages.0.role", "maxTokens"]
    with pytest.raises(InvalidRequest, match="flow: must be a string"):
        runtime.start(None, {**HELLO, "flow": 3})
    assert runtime.active_streams == 0


async def test_pre_stream_errors_become_the_one_terminal_event_of_run() -> None:
    events = await collect(make_runtime(("default", two_texts)), "nope")
    assert events == [
        {
            "type": "error",
            "error": {
                "code": "NOT_FOUND",
                "message": "no flow named 'nope'; known flows: 'default'",
                "details": {"flow": "nope"},
            },
            "id": "1",
            "progress": "ERROR",
        }
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": []},
        {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
        {"messages": [{"role": "user", "content": "x"}], "unknown": 1},
        {"messages": [{"role": "user", "content": "x", "name": "n", "extra": 1}]},
    ],
)
async def test_chat_request_rejects_bad_fields(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        make_runtime(("default", two_texts)).start(None, payload)


async def test_chat_request_accepts_snake_and_camel_case() -> None:
    runtime = make_runtime(("default", two_texts))
    for key in ("sessionId", "session_id"):
        stream = runtime.start(None, {**HELLO, key: "s-1"})
        assert stream.request.session_id == "s-1"  # type: ignore[attr-defined]
        await stream.aclose()


async def test_a_flow_with_its_own_request_model() -> None:
    class Sum(BaseModel):
        model_config = ConfigDict(extra="forbid")
        numbers: list[int]

    async def add(request: Sum) -> AsyncIterator[Event]:
        yield {"type": "data", "data": {"sum": sum(request.numbers)}}

    registry = FlowRegistry()
    registry.register("sum", add, request_model=Sum)
    runtime = FlowRuntime(registry)
    events = await collect(runtime, None, {"flow": "sum", "numbers": [1, 2]})
    assert events[0]["data"] == {"sum": 3}
    with pytest.raises(InvalidRequest, match="numbers"):
        runtime.start("sum", {"numbers": ["x"]})


async def test_timeout_ends_the_stream_with_deadline_exceeded_and_closes_the_flow() -> None:
    closed = asyncio.Event()

    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "first"}
            await asyncio.Event().wait()
        finally:
            closed.set()
        yield {"type": "text", "text": "never"}

    registry = FlowRegistry()
    registry.register("slow", slow, timeout=0.05)
    events = await collect(FlowRuntime(registry), "slow")
    assert [e["type"] for e in events] == ["text", "error"]
    assert events[-1]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert closed.is_set()


async def test_the_runtime_default_timeout_applies() -> None:
    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        await asyncio.Event().wait()
        yield {"type": "text", "text": "never"}

    events = await collect(make_runtime(("default", slow), timeout=0.05), None)
    assert events[-1]["error"]["code"] == DeadlineExceeded.code


async def test_a_flows_own_timeout_error_is_a_crash_not_a_deadline() -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        raise TimeoutError("upstream")
        yield {"type": "text", "text": "never"}

    events = await collect(make_runtime(("default", flow), timeout=10), None)
    assert events[-1]["error"]["code"] == "INTERNAL"


async def test_max_streams_rejects_with_resource_exhausted_and_frees_slots() -> None:
    runtime = make_runtime(("default", two_texts), max_streams=1)
    first = runtime.start(None, HELLO)
    with pytest.raises(Overloaded) as caught:
        runtime.start(None, HELLO)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert caught.value.details == {"retryAfter": 1.0, "limit": "server"}
    async with aclosing(first):
        assert [e["type"] async for e in first] == ["text", "text", "done"]
    assert runtime.active_streams == 0
    never_iterated = runtime.start(None, HELLO)
    await never_iterated.aclose()
    assert runtime.active_streams == 0


async def test_consumer_closing_early_runs_the_flows_finally() -> None:
    closed = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            for n in range(100):
                yield {"type": "text", "text": str(n)}
        finally:
            closed.append(True)

    runtime = make_runtime(("default", flow))
    stream = runtime.start(None, HELLO)
    async with aclosing(stream):
        async for event in stream:
            if event["id"] == "3":
                break
    assert closed == [True]
    assert runtime.active_streams == 0


async def test_cancelling_the_consumer_cancels_the_flow_and_runs_its_finally() -> None:
    started, cancelled, closed = asyncio.Event(), [], []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "go"}
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finally:
            closed.append(True)
        yield {"type": "text", "text": "never"}

    runtime = make_runtime(("default", flow))

    async def consume() -> None:
        async for _ in runtime.run(None, HELLO):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]
    assert closed == [True]
    assert runtime.active_streams == 0


async def test_shutdown_refuses_new_streams_and_stop_streams_ends_running_ones() -> None:
    waiting = asyncio.Event()
    closed = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "a"}
            waiting.set()
            await asyncio.Event().wait()
        finally:
            closed.append(True)
        yield {"type": "text", "text": "never"}

    runtime = make_runtime(("default", flow))
    consumer = asyncio.create_task(collect(runtime, None))
    await asyncio.wait_for(waiting.wait(), 5)
    assert not await runtime.drain(0.01)
    assert runtime.draining
    with pytest.raises(Unavailable):
        runtime.start(None, HELLO)
    assert runtime.stop_streams() == 1
    events = await asyncio.wait_for(consumer, 5)
    assert events[-1]["error"]["code"] == "UNAVAILABLE"
    assert events[-1]["id"] == "2"
    assert closed == [True]
    assert await runtime.drain(0.01)


async def test_stop_streams_between_events_ends_the_stream_at_the_next_step() -> None:
    runtime = make_runtime(("default", two_texts))
    stream = runtime.start(None, HELLO)
    async with aclosing(stream):
        first = await stream.__anext__()
        runtime.stop_streams()
        rest = [e async for e in stream]
    assert first["type"] == "text"
    assert [e["type"] for e in rest] == ["error"]
    assert rest[0]["error"]["code"] == "UNAVAILABLE"


async def test_invoke_collects_everything() -> None:
    result = await make_runtime(("default", two_texts)).invoke(None, HELLO)
    assert result["text"] == "ab"
    assert result["error"] is None
    assert len(result["events"]) == 3


async def test_invoke_reports_the_error() -> None:
    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        raise LLMBrickError("bad", code=ErrorCode.UNAUTHENTICATED)
        yield {"type": "text", "text": "never"}

    result = await make_runtime(("default", flow)).invoke(None, HELLO)
    assert result["error"] == {"code": "UNAUTHENTICATED", "message": "bad"}


async def test_stream_start_and_end_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llmbrick"):
        await collect(make_runtime(("default", two_texts)), None)
    lines = [r.getMessage() for r in caplog.records]
    start = re.fullmatch(
        r"stream start id=(\S+) flow=default transport=python request_id=(\S+) principal=-",
        lines[0],
    )
    assert start is not None, lines[0]
    stream_id, request_id = start.groups()
    assert lines[1].startswith(
        f"stream end id={stream_id} flow=default transport=python request_id={request_id} "
        "principal=- outcome=ok events=3 duration_ms="
    )
    # Structured fields for JSON log shippers ride on the record.
    assert caplog.records[1].llmbrick["outcome"] == "ok"  # type: ignore[attr-defined]
    assert "hello" not in caplog.text


def test_runtime_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="timeout"):
        FlowRuntime(timeout=0)
    with pytest.raises(ValueError, match="max_streams"):
        FlowRuntime(max_streams=0)


async def test_the_request_names_the_flow_it_runs_in() -> None:
    seen: list[str] = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        seen.append(request.flow)
        yield {"type": "text", "text": "x"}

    runtime = make_runtime(("named", flow))
    await collect(runtime, "named", HELLO)
    await collect(runtime, None, {**HELLO, "flow": "named"})
    assert seen == ["named", "named"]
