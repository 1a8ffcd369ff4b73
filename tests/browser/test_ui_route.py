"""The UI message stream route over HTTP: request mapping, chunk sequences, refusals.

The SDK's own client is exercised in ``test_ai_sdk.py``; these pin the wire details
it relies on (headers, chunk order, ``[DONE]``) and what the route refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from llmbrick import ApiKeyAuth, FlowRegistry, FlowRuntime, InvalidRequest, MemoryStore
from llmbrick.runtime import DISCONNECT_HEADER
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import create_ui_router
from llmbrick_sse.ui import ui_messages_to_chat
from tests.browser.flows import Flows
from tests.support import TIMEOUT, Gate, parse_sse, serve_asgi

#: The HTTP tests share the module's app, so they run on the module's loop.
live = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One app with the open route and one fixed to the ``notes`` flow."""
    runtime = FlowRuntime(Flows().registry)
    routes = [
        create_ui_router(runtime),
        create_ui_router(runtime, path="/v1/ui/notes", flow="notes", name="notes"),
    ]
    async with (
        serve_asgi(build_app(routes, HttpSettings())) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        yield http


def ask(text: str, **extra: Any) -> dict[str, Any]:
    """The body DefaultChatTransport sends for one user message."""
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": "chat-1", "messages": [message], "trigger": "submit-message", **extra}


def chunks(body: str) -> list[Any]:
    return [data for name, _, data in parse_sse(body.replace("data: [DONE]", 'data: "[DONE]"'))]


@live
async def test_a_stream_is_the_sdks_chunk_sequence_ending_with_done(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/ui/chat", json=ask("a b"))
    assert response.status_code == 200
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    stream_id = response.headers["x-llmbrick-stream-id"]
    got = chunks(response.text)
    assert got[0] == {"type": "start", "messageId": f"msg-{stream_id}"}
    assert [chunk["type"] if isinstance(chunk, dict) else chunk for chunk in got] == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
        "[DONE]",
    ]
    assert {chunk.get("id") for chunk in got[2:7]} == {"text-1"}
    assert got[-2] == {"type": "finish", "finishReason": "stop"}


@live
async def test_an_error_closes_the_text_then_reports_code_and_message(
    client: httpx.AsyncClient,
) -> None:
    got = chunks((await client.post("/v1/ui/chat", json=ask("x", flow="fail"))).text)
    assert got[-6:] == [
        {"type": "text-delta", "id": "text-1", "delta": "half an answer "},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "error", "errorText": "UNAVAILABLE: the model went away"},
        {"type": "finish", "finishReason": "error"},
        "[DONE]",
    ]


@live
async def test_a_tool_call_ends_the_text_and_the_finish_says_tool_calls(
    client: httpx.AsyncClient,
) -> None:
    got = chunks((await client.post("/v1/ui/chat", json=ask("x", flow="weather"))).text)
    kinds = [chunk["type"] if isinstance(chunk, dict) else chunk for chunk in got]
    assert kinds[2:] == [
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-available",
        "data-meta",
        "finish-step",
        "finish",
        "[DONE]",
    ]
    assert got[5] == {
        "type": "tool-input-available",
        "toolCallId": "call-1",
        "toolName": "weather",
        "input": {"city": "Paris"},
    }
    assert got[-2] == {"type": "finish", "finishReason": "tool-calls"}


@live
async def test_a_tool_call_whose_arguments_are_not_json_is_an_input_error(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/ui/chat", json=ask("x", flow="badtool"))
    stream_id = response.headers["x-llmbrick-stream-id"]
    got = chunks(response.text)
    assert got[2] == {
        "type": "tool-input-error",
        "toolCallId": f"call-msg-{stream_id}-1",
        "toolName": "weather",
        "input": "{city: Paris",
        "errorText": "the tool call's arguments are not valid JSON",
    }


@live
async def test_a_route_fixed_to_a_flow_runs_it_and_refuses_others(
    client: httpx.AsyncClient,
) -> None:
    got = chunks((await client.post("/v1/ui/notes", json=ask("x"))).text)
    assert "".join(chunk.get("delta", "") for chunk in got if isinstance(chunk, dict)) == (
        "hello again"
    )
    refused = await client.post("/v1/ui/notes", json=ask("x", flow="default"))
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        "invalid request: flow: this route runs flow 'notes', not 'default'"
    )


@live
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (ask("x", flow="nope"), 404, "no flow named 'nope'"),
        (ask("x", flow="sum"), 422, "flow 'sum' takes no chat messages"),
        (ask("x", temperature=9), 422, "temperature"),
        (ask("x", surprise=True), 422, "surprise"),
        ({"messages": []}, 422, "messages: must be a non-empty list"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "file", "url": "data:,"}]}]},
            422,
            "messages.0.parts.0: file parts are not supported here",
        ),
        ([1, 2], 422, "the body must be a JSON object"),
    ],
)
async def test_what_the_route_refuses(
    client: httpx.AsyncClient, body: Any, status: int, message: str
) -> None:
    response = await client.post("/v1/ui/chat", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_ui_messages_become_chat_messages_step_by_step() -> None:
    messages = [
        {"role": "system", "parts": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "text": "weather?"}]},
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "the user wants weather"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool-weather",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {"city": "Paris"},
                    "output": {"celsius": 21},
                },
                {
                    "type": "dynamic-tool",
                    "toolName": "clock",
                    "toolCallId": "c2",
                    "state": "output-error",
                    "input": {},
                    "errorText": "no clock",
                },
                {"type": "tool-later", "toolCallId": "c3", "state": "input-available", "input": {}},
                {"type": "step-start"},
                {"type": "data-meta", "data": {}},
                {"type": "text", "text": "21 degrees."},
            ],
        },
        {"role": "user", "content": "thanks"},  # the SDK's older message shape
    ]
    assert ui_messages_to_chat(messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "toolCalls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "toolCallId": "c1", "content": '{"celsius":21}'},
        {"role": "tool", "toolCallId": "c2", "content": "no clock"},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": "thanks"},
    ]


@pytest.mark.parametrize(
    ("messages", "loc"),
    [
        ([{"role": "robot", "parts": []}], "messages.0.role"),
        ([{"role": "user", "parts": [{"text": "x"}]}], "messages.0.parts.0.type"),
        (
            [{"role": "user", "parts": [{"type": "tool-x", "toolCallId": "c"}]}],
            "messages.0.parts.0.type",
        ),
        (
            [{"role": "assistant", "parts": [{"type": "tool-x", "state": "output-available"}]}],
            "messages.0.parts.0.toolCallId",
        ),
    ],
)
def test_malformed_ui_messages_name_their_place(messages: Any, loc: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ui_messages_to_chat(messages)
    assert caught.value.details[0]["loc"] == loc


async def test_a_chat_stream_is_read_again_by_chat_id_after_a_drop() -> None:
    """``GET /v1/ui/chat/{id}/stream``: what ``useChat({resume: true})`` asks after a reload."""
    gate = Gate()
    registry = FlowRegistry()
    registry.register("default", gate.flow)
    runtime = FlowRuntime(
        registry, store=MemoryStore(), authenticator=ApiKeyAuth(["ka name=a", "kb name=b"])
    )
    alice = {"authorization": "Bearer ka", DISCONNECT_HEADER: "grace"}
    async with (
        serve_asgi(build_app([create_ui_router(runtime)], HttpSettings())) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        async with http.stream("POST", "/v1/ui/chat", json=ask("hi"), headers=alice) as first:
            stream_id = first.headers["x-llmbrick-stream-id"]
            seen = ""
            async for text in first.aiter_text():
                seen += text
                if '"delta":"t2"' in seen:
                    break  # the page reloads: the connection drops mid-answer
        gate.release.set()
        again = await http.get("/v1/ui/chat/chat-1/stream", headers=alice)
        assert again.status_code == 200, again.text
        assert again.headers["x-vercel-ai-ui-message-stream"] == "v1"
        replayed = chunks(again.text)
        # The whole answer from its start, under the same message id, then the end.
        assert replayed[0] == {"type": "start", "messageId": f"msg-{stream_id}"}
        deltas = [c["delta"] for c in replayed[:-1] if c["type"] == "text-delta"]
        assert deltas == ["t1", "t2", "t3", "t4", "t5", "t6"]
        assert replayed[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]
        assert gate.ended == ["done"]
        # Another key's request, an unknown chat, and a method the route does not take.
        other = {"authorization": "Bearer kb"}
        assert (await http.get("/v1/ui/chat/chat-1/stream", headers=other)).status_code == 204
        unknown = await http.get("/v1/ui/chat/chat-2/stream", headers=alice)
        assert (unknown.status_code, unknown.content) == (204, b"")
        too_long = await http.get(f"/v1/ui/chat/{'c' * 300}/stream", headers=alice)
        assert (too_long.status_code, too_long.content) == (204, b"")  # never indexed
        assert (await http.get("/v1/ui/chat/chat-1/stream")).status_code == 401
        refused = await http.delete("/v1/ui/chat/chat-1/stream", headers=alice)
        assert (refused.status_code, refused.headers["allow"]) == (405, "GET")


async def test_without_a_store_a_chat_has_no_stream_to_read_again() -> None:
    async with (
        serve_asgi(
            build_app([create_ui_router(FlowRuntime(Flows().registry))], HttpSettings())
        ) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        assert (await http.post("/v1/ui/chat", json=ask("hi"))).status_code == 200
        response = await http.get("/v1/ui/chat/chat-1/stream")
        assert (response.status_code, response.content) == (204, b"")
