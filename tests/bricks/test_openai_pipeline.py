"""OpenAILLM inside a Pipeline run by FlowRuntime: the exact events, errors and cancellation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llmbrick import Event, FlowRegistry, FlowRuntime, Pipeline, RectifyBrick
from llmbrick.bricks import KeywordGuard, TextInput
from llmbrick.bricks.openai import OpenAILLM
from tests.bricks.conftest import KEY, MakeBrick
from tests.bricks.upstream import Upstream
from tests.support import TIMEOUT

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
USAGE = {"promptTokens": 12, "completionTokens": 3, "totalTokens": 15}


def runtime_for(*bricks: Any) -> FlowRuntime:
    pipeline = Pipeline()
    for brick in bricks:
        pipeline.add_brick(brick)
    registry = FlowRegistry()
    registry.register("default", pipeline)
    return FlowRuntime(registry)


async def run(runtime: FlowRuntime, payload: dict[str, Any] = HELLO) -> list[Event]:
    return [event async for event in runtime.run(None, payload)]


class Shout(RectifyBrick):
    async def handle(self, request: TextInput) -> TextInput:
        return TextInput(text=request.text.upper())


async def test_text_then_usage_then_done(make_brick: MakeBrick) -> None:
    runtime = runtime_for(KeywordGuard(["bomb"]), make_brick("text"))
    assert await run(runtime) == [
        {"type": "text", "text": "Hello", "model": "text", "id": "1", "progress": "IN_PROGRESS"},
        {"type": "text", "text": " there", "model": "text", "id": "2", "progress": "IN_PROGRESS"},
        {"type": "text", "text": "!", "model": "text", "id": "3", "progress": "IN_PROGRESS"},
        {
            "type": "meta",
            "metadata": {"finishReason": "stop", "usage": USAGE},
            "id": "4",
            "progress": "IN_PROGRESS",
        },
        {"type": "done", "id": "5", "progress": "DONE"},
    ]


async def test_tool_calls_are_events_of_their_own(make_brick: MakeBrick) -> None:
    assert await run(runtime_for(make_brick("tools"))) == [
        {
            "type": "tool_call",
            "data": {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            "id": "1",
            "progress": "IN_PROGRESS",
        },
        {
            "type": "tool_call",
            "data": {"id": "call_2", "name": "get_time", "arguments": '{"tz": "UTC"}'},
            "id": "2",
            "progress": "IN_PROGRESS",
        },
        {
            "type": "meta",
            "metadata": {"finishReason": "tool_calls", "usage": USAGE},
            "id": "3",
            "progress": "IN_PROGRESS",
        },
        {"type": "done", "id": "4", "progress": "DONE"},
    ]


async def test_later_bricks_rewrite_the_text_but_never_see_the_llms_events(
    make_brick: MakeBrick,
) -> None:
    events = await run(runtime_for(make_brick("text"), Shout()))
    assert [(event["type"], event.get("text")) for event in events] == [
        ("text", "HELLO"),
        ("text", " THERE"),
        ("text", "!"),
        ("meta", None),
        ("done", None),
    ]
    assert events[3]["metadata"] == {"finishReason": "stop", "usage": USAGE}


async def test_chat_request_fields_reach_the_upstream(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    payload = {
        "model": "text",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "toolCalls": [call]},
            {"role": "tool", "content": "42", "toolCallId": "c1"},
        ],
        "temperature": 0.2,
        "maxTokens": 9,
        "topP": 0.5,
        "stop": "END",
        "seed": 3,
        "responseFormat": {"type": "json_object"},
        "user": "u",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "toolChoice": "required",
        "sessionId": "not for the model",
    }
    events = await run(runtime_for(make_brick(None)), payload)
    assert events[-1]["type"] == "done"
    body = upstream.requests[0].body
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert {key: body[key] for key in body if key not in ("messages", "stream_options")} == {
        "model": "text",
        "temperature": 0.2,
        "max_tokens": 9,
        "top_p": 0.5,
        "stop": "END",
        "seed": 3,
        "response_format": {"type": "json_object"},
        "user": "u",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "required",
        "stream": True,
    }


async def test_a_guard_rejection_never_reaches_the_upstream(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    payload = {"messages": [{"role": "user", "content": "a bomb"}]}
    events = await run(runtime_for(KeywordGuard(["bomb"]), make_brick("text")), payload)
    assert [event["error"]["code"] for event in events] == ["PERMISSION_DENIED"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("model", "texts", "error"),
    [
        ("unauthorized", [], {"code": "UNAUTHENTICATED"}),
        ("forbidden", [], {"code": "PERMISSION_DENIED"}),
        ("gpt-unknown", [], {"code": "NOT_FOUND"}),
        ("bad-request", [], {"code": "INVALID_ARGUMENT"}),
        ("rate-limited", [], {"code": "RESOURCE_EXHAUSTED", "details": {"retryAfter": 7.0}}),
        ("server-error", [], {"code": "UNAVAILABLE"}),
        ("cut", ["Hello"], {"code": "UNAVAILABLE"}),
    ],
)
async def test_an_upstream_failure_is_the_error_event_without_the_key(
    make_brick: MakeBrick, model: str, texts: list[str], error: dict[str, Any]
) -> None:
    events = await run(runtime_for(make_brick(model)))
    *streamed, last = events
    assert [event.get("text") for event in streamed] == texts
    assert last["type"] == "error" and last["progress"] == "ERROR"
    got: dict[str, Any] = dict(last["error"])
    assert got.pop("message").startswith("the model server")
    assert got == error
    assert KEY not in json.dumps(events)


async def test_cancelling_the_flow_closes_the_upstream_stream(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    runtime = runtime_for(make_brick("slow"))
    events: list[Event] = []
    first = asyncio.Event()

    async def client() -> None:
        async for event in runtime.run(None, HELLO):
            events.append(event)
            first.set()

    task = asyncio.create_task(client())
    await asyncio.wait_for(first.wait(), TIMEOUT)
    assert not upstream.disconnected.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server sees the connection close: it would stop generating now.
    await asyncio.wait_for(upstream.disconnected.wait(), TIMEOUT)
    assert events == [
        {"type": "text", "text": "Hello", "model": "slow", "id": "1", "progress": "IN_PROGRESS"}
    ]
    assert runtime.active_streams == 0


async def test_runtime_aclose_closes_the_brick(make_brick: MakeBrick) -> None:
    brick: OpenAILLM = make_brick("text")
    runtime = runtime_for(brick)
    await run(runtime)
    await runtime.aclose()
    assert brick.client.is_closed()
