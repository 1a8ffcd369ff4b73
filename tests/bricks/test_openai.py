"""OpenAILLM on its own, against a live OpenAI-compatible server: mapping, streaming, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from pydantic import BaseModel

from llmbrick import LLMBrickError, Message
from llmbrick.bricks import LLMRequest, TextChunk
from llmbrick.bricks.models import BrickEvent, Document
from llmbrick.bricks.openai import OpenAILLM
from tests.bricks.conftest import KEY, MakeBrick
from tests.bricks.upstream import Upstream
from tests.support import TIMEOUT

HELLO = LLMRequest.model_validate({"messages": [{"role": "user", "content": "hello"}]})
USAGE = {"promptTokens": 12, "completionTokens": 3, "totalTokens": 15}


async def outputs(brick: OpenAILLM, request: Any = HELLO) -> list[BaseModel]:
    return [item async for item in brick.stream(request)]


async def failure(brick: OpenAILLM, request: Any = HELLO) -> tuple[LLMBrickError, list[Any]]:
    """The error the brick raised, and what it yielded before."""
    got: list[Any] = []
    with pytest.raises(LLMBrickError) as caught:
        async for item in brick.stream(request):
            got.append(item)
    return caught.value, got


# -- streaming ---------------------------------------------------------------------------


async def test_text_streams_as_chunks_then_meta_with_usage_and_finish_reason(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    assert await outputs(make_brick("text")) == [
        TextChunk(text="Hello", model="text"),
        TextChunk(text=" there", model="text"),
        TextChunk(text="!", model="text"),
        BrickEvent(type="meta", metadata={"finishReason": "stop", "usage": USAGE}),
    ]
    (received,) = upstream.requests
    assert received.headers["authorization"] == f"Bearer {KEY}"
    assert received.body == {
        "model": "text",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_a_server_without_usage_still_reports_the_finish_reason(
    make_brick: MakeBrick,
) -> None:
    assert await outputs(make_brick("no-usage")) == [
        TextChunk(text="Hi", model="no-usage"),
        BrickEvent(type="meta", metadata={"finishReason": "length"}),
    ]


async def test_tool_calls_are_assembled_from_their_deltas_and_emitted_once_each(
    make_brick: MakeBrick,
) -> None:
    assert await outputs(make_brick("tools")) == [
        BrickEvent(
            type="tool_call",
            data={"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        ),
        BrickEvent(
            type="tool_call",
            data={"id": "call_2", "name": "get_time", "arguments": '{"tz": "UTC"}'},
        ),
        BrickEvent(type="meta", metadata={"finishReason": "tool_calls", "usage": USAGE}),
    ]


async def test_every_request_field_maps_to_the_api(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    request = LLMRequest.model_validate(
        {
            "model": "text",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather?", "name": "ann"},
                {"role": "assistant", "toolCalls": [call]},
                {"role": "tool", "content": "sunny", "toolCallId": "c1"},
            ],
            "temperature": 0.5,
            "maxTokens": 64,
            "topP": 0.9,
            "stop": ["\n\n"],
            "seed": 7,
            "responseFormat": {"type": "json_object"},
            "user": "u-1",
            "tools": [tool],
            "toolChoice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    # The brick's defaults fill in what the request leaves out, and lose to what it sets.
    brick = make_brick(None, temperature=1.5, presence_penalty=0.25)
    await outputs(brick, request)
    assert upstream.requests[0].body == {
        "model": "text",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather?", "name": "ann"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        ],
        "temperature": 0.5,
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
        "user": "u-1",
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "presence_penalty": 0.25,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_max_tokens_can_go_under_the_name_reasoning_models_want(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    brick = make_brick("text", max_tokens_param="max_completion_tokens")
    await outputs(brick, HELLO.model_copy(update={"max_tokens": 5}))
    body = upstream.requests[0].body
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body


async def test_retrieved_documents_join_the_system_message(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    docs = [Document(id="d1", title="Paris", text="Capital of France."), Document(id="2", text="x")]
    plain = HELLO.model_copy(update={"documents": docs})
    system = plain.model_copy(
        update={"messages": [Message(role="system", content="be brief"), *HELLO.messages]}
    )
    brick = make_brick("text")
    await outputs(brick, plain)
    await outputs(brick, system)
    context = "Answer with the help of these documents:\n\n[1] Paris\nCapital of France.\n\n[2]\nx"
    assert upstream.requests[0].body["messages"] == [
        {"role": "system", "content": context},
        {"role": "user", "content": "hello"},
    ]
    assert upstream.requests[1].body["messages"] == [
        {"role": "system", "content": f"be brief\n\n{context}"},
        {"role": "user", "content": "hello"},
    ]


# -- configuration -----------------------------------------------------------------------


async def test_the_bricks_model_wins_unless_it_has_none(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    choosy = HELLO.model_copy(update={"model": "text"})
    assert (await outputs(make_brick("no-usage"), choosy))[0] == TextChunk(
        text="Hi", model="no-usage"
    )
    assert (await outputs(make_brick(None), choosy))[0] == TextChunk(text="Hello", model="text")
    error, _ = await failure(make_brick(None))
    assert (error.code, error.message) == (
        "INVALID_ARGUMENT",
        "the request names no model, and brick 'openai' has none configured",
    )
    assert [request.body["model"] for request in upstream.requests] == ["no-usage", "text"]


async def test_key_and_url_come_from_the_environment(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
    brick = OpenAILLM("text")
    try:
        assert [type(item) for item in await outputs(brick)][-1] is BrickEvent
    finally:
        await brick.aclose()
    assert brick.base_url == upstream.base_url
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-from-env"


async def test_a_local_server_needs_no_key(
    upstream: Upstream, make_brick: MakeBrick, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert len(await outputs(make_brick("text", api_key=None))) == 4
    # A server that does want a key says so, and the error says how to give one.
    error, _ = await failure(make_brick("unauthorized", api_key=None))
    assert error.message.endswith("set api_key= or OPENAI_API_KEY")


def test_openai_itself_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match=r"pass api_key=\.\.\. or set OPENAI_API_KEY"):
        OpenAILLM("gpt-4o-mini")


def test_defaults_cannot_replace_what_the_brick_sets() -> None:
    with pytest.raises(ValueError, match="sets messages, stream itself"):
        OpenAILLM("m", api_key="k", messages=[], stream=False)


async def test_aclose_closes_the_sdk_client(make_brick: MakeBrick) -> None:
    brick = make_brick("text")
    await outputs(brick)
    assert not brick.client.is_closed()
    await brick.aclose()
    assert brick.client.is_closed()


# -- upstream failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code", "message", "details"),
    [
        (
            "unauthorized",
            "UNAUTHENTICATED",
            "the model server rejected the API key (HTTP 401)",
            None,
        ),
        (
            "forbidden",
            "PERMISSION_DENIED",
            "the model server refused access: Project proj_1 does not have access to model "
            "forbidden",
            None,
        ),
        (
            "gpt-unknown",
            "NOT_FOUND",
            "the model server answered 404 for model 'gpt-unknown': The model `gpt-unknown` does "
            "not exist or you do not have access to it.",
            None,
        ),
        (
            "bad-request",
            "INVALID_ARGUMENT",
            "the model server rejected the request: Invalid value for 'temperature': must be at "
            "most 2.",
            None,
        ),
        (
            "rate-limited",
            "RESOURCE_EXHAUSTED",
            "the model server is rate limiting: Rate limit reached for requests",
            {"retryAfter": 7.0},
        ),
        (
            "rate-limited-ms",
            "RESOURCE_EXHAUSTED",
            "the model server is rate limiting: Rate limit reached for tokens",
            {"retryAfter": 1.5},
        ),
        (
            "server-error",
            "UNAVAILABLE",
            "the model server failed (HTTP 500): The server had an error while processing your "
            "request.",
            None,
        ),
        (
            "no-finish",
            "UNAVAILABLE",
            "the model server's stream ended before the answer was complete",
            None,
        ),
        (
            "stream-error",
            "UNAVAILABLE",
            "the model server failed mid-answer: The model is overloaded",
            None,
        ),
        ("gateway-error", "PERMISSION_DENIED", "guard: blocked word 'bomb'", None),
    ],
)
async def test_upstream_failures_become_llmbrick_codes(
    upstream: Upstream,
    make_brick: MakeBrick,
    model: str,
    code: str,
    message: str,
    details: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    error, _ = await failure(make_brick(model))
    assert (error.code, error.message, error.details) == (code, message, details)
    # The operator's log says which server failed, and never shows the key either.
    assert f"brick 'openai': the model server at {upstream.base_url} " in caplog.text
    assert KEY not in caplog.text
    assert upstream.count(model) == 1


async def test_a_refused_connection_is_unavailable(make_brick: MakeBrick) -> None:
    # Bound but not listening: the kernel refuses every connection to this port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        error, _ = await failure(make_brick("text", base_url=f"http://{host}:{port}/v1"))
    assert (error.code, error.message) == ("UNAVAILABLE", "cannot reach the model server")


async def test_a_stall_past_the_timeout_is_deadline_exceeded_and_hangs_up(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    error, _ = await failure(make_brick("slow", timeout=1.0))
    assert (error.code, error.message) == (
        "DEADLINE_EXCEEDED",
        "the model server sent nothing for 1 s",
    )
    await asyncio.wait_for(upstream.disconnected.wait(), TIMEOUT)


# -- retries -----------------------------------------------------------------------------


async def test_a_failed_request_is_retried_before_the_first_token(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    got = await outputs(make_brick("flaky", max_retries=1))
    assert [item.text for item in got if isinstance(item, TextChunk)] == ["Hello", " there", "!"]
    assert upstream.count("flaky") == 2


async def test_without_retries_the_first_failure_is_final(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    error, _ = await failure(make_brick("flaky", max_retries=0))
    assert error.code == "UNAVAILABLE"
    assert upstream.count("flaky") == 1


async def test_a_stream_cut_after_a_token_is_unavailable_and_never_retried(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    error, got = await failure(make_brick("cut", max_retries=3))
    assert got == [TextChunk(text="Hello", model="cut")]
    assert (error.code, error.message) == (
        "UNAVAILABLE",
        "the model server's stream broke off before the answer ended",
    )
    assert upstream.count("cut") == 1


# -- going away --------------------------------------------------------------------------


async def test_closing_the_stream_early_hangs_up_on_the_server(
    upstream: Upstream, make_brick: MakeBrick
) -> None:
    stream: AsyncIterator[Any] = make_brick("slow").stream(HELLO)
    async with aclosing(stream):  # type: ignore[type-var]
        assert await anext(stream) == TextChunk(text="Hello", model="slow")
    await asyncio.wait_for(upstream.disconnected.wait(), TIMEOUT)
