"""The official openai Python SDK, unmodified, against the OpenAI API of a live server.

Every call goes over a real socket to ``SSEServer``, which mounts the API at
``/v1``. The blocking client runs in a thread (``asyncio.to_thread``) while the
server runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from llmbrick import ApiKeyAuth, CallerLimits, FlowRuntime
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import SSEServer, create_openai_router
from llmbrick_sse.codec import PING
from tests.openai.flows import WEATHER_CALL, Flows, user
from tests.support import TIMEOUT, serve_asgi


async def chunks_of(stream: openai.AsyncStream[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- answers ------------------------------------------------------------------------------


async def test_a_whole_answer_is_one_chat_completion(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model="default", messages=user("hello world"))
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "default"
    (choice,) = answer.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello world"
    assert choice.message.tool_calls is None
    # EchoLLM reports no usage: no prompt count, one completion token per text event.
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (0, 2)
    assert answer.usage.total_tokens == 2


async def test_an_alias_reaches_its_flow_and_is_the_answers_model(
    client: openai.AsyncOpenAI,
) -> None:
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=user("hi there"))
    assert answer.model == "gpt-4o-mini"
    assert answer.choices[0].message.content == "hi there"


async def test_a_stream_is_chunks_with_one_id_the_role_first_and_a_finish(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="default", messages=user("hello big world"), stream=True
    )
    chunks = await chunks_of(stream)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"default"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert all(len(c.choices) == 1 for c in chunks)  # no usage chunk unless asked for
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert text_of(chunks) == "hello big world"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]


async def test_include_usage_adds_a_last_chunk_without_choices(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="default",
        messages=user("hello world"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await chunks_of(stream)
    *answer, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 0,
        "completion_tokens": 2,
        "total_tokens": 2,
    }
    assert all(c.usage is None for c in answer)


async def test_the_flows_usage_finish_reason_and_other_events_reach_the_client(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="rich", messages=user("x"), stream=True, stream_options={"include_usage": True}
    )
    chunks = await chunks_of(stream)
    assert text_of(chunks) == "cut short"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.total_tokens) == (7, 9)
    extra = [
        event["type"]
        for c in chunks
        for event in (c.model_extra or {}).get("llmbrick", {}).get("events", [])
    ]
    assert extra == ["citation", "meta"]

    answer = await client.chat.completions.create(model="rich", messages=user("x"))
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == "cut short"
    assert answer.usage is not None and answer.usage.completion_tokens == 2
    events = (answer.model_extra or {})["llmbrick"]["events"]
    assert [e["type"] for e in events] == ["citation", "meta"]
    assert events[0]["data"] == {"url": "https://example.com/a"}


async def test_a_guard_rejection_is_a_content_filter_finish(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="default", messages=user("a bomb"), stream=True
    )
    (chunk,) = await chunks_of(stream)
    assert chunk.choices[0].finish_reason == "content_filter"
    (event,) = (chunk.model_extra or {})["llmbrick"]["events"]
    assert event["error"]["code"] == "PERMISSION_DENIED"
    assert event["error"]["details"]["guard"] == "keyword-guard"

    answer = await client.chat.completions.create(model="default", messages=user("a bomb"))
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content is None


async def test_the_blocking_client_in_a_thread(sync_client: openai.OpenAI) -> None:
    answer = await asyncio.to_thread(
        sync_client.chat.completions.create, model="default", messages=user("hello world")
    )
    assert answer.choices[0].message.content == "hello world"

    def stream() -> list[ChatCompletionChunk]:
        with sync_client.chat.completions.create(
            model="default",
            messages=user("one two"),
            stream=True,
            stream_options={"include_usage": True},
        ) as chunks:
            return list(chunks)

    chunks = await asyncio.to_thread(stream)
    assert text_of(chunks) == "one two"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


# --- request fields -----------------------------------------------------------------------


async def test_fields_map_onto_the_chat_request_and_the_rest_into_options(
    client: openai.AsyncOpenAI, flows: Flows
) -> None:
    answer = await client.chat.completions.create(
        model="inspect",
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        max_completion_tokens=5,
        temperature=0.5,
        top_p=0.9,
        stop=["x"],
        seed=3,
        user="u-1",
        metadata={"k": "v"},
        response_format={"type": "json_object"},
        n=1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"50256": -100},
        parallel_tool_calls=False,
        reasoning_effort="low",
        service_tier="auto",
        store=False,
        top_logprobs=0,
        verbosity="low",
        prompt_cache_key="cache-1",
        safety_identifier="s-1",
    )
    (request,) = flows.requests
    assert [(m.role, m.content, m.parts) for m in request.messages] == [
        ("system", "be brief", None),
        ("user", "a\nb", None),
    ]
    assert request.model == "inspect" and request.stream is False
    assert (request.max_tokens, request.temperature, request.top_p) == (5, 0.5, 0.9)
    assert (request.stop, request.seed, request.user) == (["x"], 3, "u-1")
    assert request.metadata == {"k": "v"}
    assert request.response_format == {"type": "json_object"}
    assert request.options == {
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"50256": -100},
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "service_tier": "auto",
        "store": False,
        "top_logprobs": 0,
        "verbosity": "low",
        "prompt_cache_key": "cache-1",
        "safety_identifier": "s-1",
    }
    assert json.loads(answer.choices[0].message.content or "")["options"] == request.options


async def test_image_parts_reach_a_flow_that_declares_images(client: openai.AsyncOpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    answer = await client.chat.completions.create(
        model="vision", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == "what is this? | text,image_url"


# --- tools --------------------------------------------------------------------------------


async def test_a_tool_call_round_trip(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = user("weather in Paris?")
    first = await client.chat.completions.create(model="tools", messages=messages)
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.id, call.function.name, call.function.arguments) == (
        WEATHER_CALL["id"],
        WEATHER_CALL["name"],
        WEATHER_CALL["arguments"],
    )
    # As the SDK's docs show it: the assistant message goes back as it came.
    messages.append(choice.message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C"})
    second = await client.chat.completions.create(model="tools", messages=messages)
    assert second.choices[0].message.content == "It is 18C in Paris."
    assert second.choices[0].finish_reason == "stop"


async def test_a_streamed_tool_call_is_a_tool_calls_delta(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="tools", messages=user("weather?"), stream=True
    )
    chunks = await chunks_of(stream)
    (delta,) = chunks[0].choices[0].delta.tool_calls or []
    assert (delta.index, delta.id, delta.type) == (0, "call_w1", "function")
    assert delta.function is not None and delta.function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The SDK's stream helper assembles the same answer from the deltas.
    async with client.chat.completions.stream(model="tools", messages=user("weather?")) as helper:
        final = await helper.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == WEATHER_CALL["arguments"]


# --- models -------------------------------------------------------------------------------


async def test_models_lists_chat_flows_and_aliases(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [model.id async for model in page]
    # Not "private" (this caller may not run it), not "sum" (not a chat flow).
    assert ids == ["default", "gpt-4o-mini", "tools", "rich", "inspect", "vision", "hold", "fail"]
    assert {(m.object, m.owned_by) for m in page.data} == {("model", "llmbrick")}
    model = await client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "llmbrick")
    for missing in ("nope", "sum", "private"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve(missing)
        assert caught.value.code == "model_not_found"


# --- errors -------------------------------------------------------------------------------


async def test_an_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-9", messages=user("x"))
    error = caught.value
    assert (error.status_code, error.code, error.param, error.type) == (
        404,
        "model_not_found",
        "model",
        "invalid_request_error",
    )
    assert "'gpt-9'" in error.message


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"extra_body": {"top_k": 5}}, "top_k", "Unrecognized request argument supplied: top_k"),
        ({"logprobs": True}, "logprobs", "logprobs is not supported"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"model": "sum"}, "model", "does not take chat requests"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'assistant'"),
        ({"messages": []}, "messages", "at least 1 item"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].type",
            "'images' capability",
        ),
    ],
)
async def test_what_a_flow_cannot_serve_is_a_bad_request(
    client: openai.AsyncOpenAI, options: dict[str, Any], param: str, words: str
) -> None:
    call: dict[str, Any] = {"model": "default", "messages": user("x"), **options}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**call)
    error = caught.value
    assert (error.status_code, error.param, error.type) == (400, param, "invalid_request_error")
    assert words in error.message


async def test_a_malformed_body_is_a_bad_request_in_openais_shape(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            f"{base_url}/chat/completions",
            content=b'{"model": "default", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("malformed JSON body")


async def test_a_wrong_key_is_an_authentication_error(flows: Flows) -> None:
    runtime = FlowRuntime(flows.registry, authenticator=ApiKeyAuth(["sk-right"]))
    async with serve_asgi(SSEServer(runtime).app) as address:
        base_url = f"http://{address}/v1"
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.chat.completions.create(model="default", messages=user("x"))
            assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
            assert caught.value.type == "authentication_error"
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
            with pytest.raises(openai.AuthenticationError):
                await bad.models.retrieve("default")
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-right", max_retries=0) as ok:
            answer = await ok.chat.completions.create(model="default", messages=user("welcome"))
            assert answer.choices[0].message.content == "welcome"
            assert "default" in [model.id async for model in await ok.models.list()]


async def test_a_flow_the_caller_may_not_run_is_permission_denied(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.chat.completions.create(model="private", messages=user("x"))
    assert caught.value.code == "PERMISSION_DENIED"
    assert caught.value.type == "permission_error"


@pytest.mark.parametrize(
    "limits",
    [{"max_streams": 1}, {"caller_limits": CallerLimits(max_streams=1)}],
    ids=["server", "caller"],
)
async def test_a_limit_is_a_rate_limit_error_with_retry_after(
    flows: Flows, limits: dict[str, Any]
) -> None:
    runtime = FlowRuntime(flows.registry, **limits)
    async with (
        serve_asgi(SSEServer(runtime).app) as address,
        openai.AsyncOpenAI(
            base_url=f"http://{address}/v1", api_key="k", max_retries=0, timeout=TIMEOUT
        ) as client,
    ):
        holder = await client.chat.completions.create(model="hold", messages=user("x"), stream=True)
        async with holder:
            await anext(holder)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="default", messages=user("x"))
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.code == "RESOURCE_EXHAUSTED"
        assert caught.value.type == "rate_limit_error"


async def test_an_error_mid_stream_raises_from_the_iteration(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="fail", messages=user("x"), stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["partial"]
    error = caught.value
    assert not isinstance(error, openai.APIStatusError)  # the status was 200
    assert (error.message, error.code, error.type) == (
        "the model went away",
        "UNAVAILABLE",
        "server_error",
    )


async def test_a_failed_whole_answer_is_its_status(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="fail", messages=user("x"))
    assert caught.value.status_code == 503
    assert caught.value.code == "UNAVAILABLE"


# --- the wire -----------------------------------------------------------------------------


async def stream_body(base_url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        return await http.post(f"{base_url}/chat/completions", json=body)


async def test_a_stream_ends_with_done_but_not_after_an_error(base_url: str) -> None:
    ok = await stream_body(base_url, {"model": "default", "messages": user("hi"), "stream": True})
    assert ok.headers["content-type"] == "text/event-stream; charset=utf-8"
    *chunks, done = ok.text.removesuffix("\n\n").split("\n\n")
    assert done == "data: [DONE]"
    finish = json.loads(chunks[-1].removeprefix("data: "))
    assert finish["choices"][0]["finish_reason"] == "stop"

    failed = await stream_body(base_url, {"model": "fail", "messages": user("x"), "stream": True})
    assert "[DONE]" not in failed.text
    last = failed.text.removesuffix("\n\n").split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: ")) == {
        "error": {
            "message": "the model went away",
            "type": "server_error",
            "param": None,
            "code": "UNAVAILABLE",
        }
    }


# --- cancellation -------------------------------------------------------------------------


async def test_closing_a_stream_early_runs_the_flows_finally(
    client: openai.AsyncOpenAI, flows: Flows
) -> None:
    stream = await client.chat.completions.create(model="hold", messages=user("x"), stream=True)
    first = await anext(stream)
    assert first.choices[0].delta.content == "started"
    await stream.close()
    await asyncio.wait_for(flows.finished.wait(), TIMEOUT)


async def test_leaving_a_blocking_stream_early_runs_the_flows_finally(
    sync_client: openai.OpenAI, flows: Flows
) -> None:
    def read_one() -> str | None:
        with sync_client.chat.completions.create(
            model="hold", messages=user("x"), stream=True
        ) as stream:
            return next(iter(stream)).choices[0].delta.content

    assert await asyncio.to_thread(read_one) == "started"
    await asyncio.wait_for(flows.finished.wait(), TIMEOUT)


# --- keepalive ----------------------------------------------------------------------------


async def test_keepalive_pings_between_chunks_do_not_disturb_the_sdk(flows: Flows) -> None:
    release = asyncio.Event()
    pinged = asyncio.Event()

    @flows.registry.flow("pause")
    async def pause(request: Any) -> Any:
        yield {"type": "text", "text": "before "}
        await release.wait()
        yield {"type": "text", "text": "after"}

    app = build_app(
        [create_openai_router(FlowRuntime(flows.registry), ping_interval=0.01)], HttpSettings()
    )

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def send_watched(message: Any) -> None:
            await send(message)
            if message.get("body") == PING:
                pinged.set()

        await app(scope, receive, send_watched)

    async with (
        serve_asgi(watched) as address,
        openai.AsyncOpenAI(
            base_url=f"http://{address}/v1", api_key="k", max_retries=0, timeout=TIMEOUT
        ) as client,
    ):
        stream = await client.chat.completions.create(
            model="pause", messages=user("x"), stream=True
        )
        first = await anext(stream)
        await asyncio.wait_for(pinged.wait(), TIMEOUT)  # a ping went out on this stream
        release.set()
        rest = await chunks_of(stream)
    assert text_of([first, *rest]) == "before after"
    assert rest[-1].choices[0].finish_reason == "stop"
