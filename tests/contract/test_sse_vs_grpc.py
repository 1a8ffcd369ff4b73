"""The same flows over SSE and gRPC, from one runtime, give the same events and the same errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, Pipeline, error_event
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_grpc import GrpcClient, GrpcServer
from llmbrick_grpc import status_for as grpc_status_for
from llmbrick_sse import SSEServer
from llmbrick_sse import status_for as http_status_for
from tests.adapters.grpc_support import chat, normalised, raw_stream, running
from tests.support import TIMEOUT, parse_sse, serve_asgi


def flows() -> FlowRegistry:
    registry = FlowRegistry()
    registry.register("default", Pipeline().add_brick(EchoLLM()))
    registry.register(
        "guarded", Pipeline().add_brick(KeywordGuard(["secret"])).add_brick(EchoLLM())
    )

    @registry.flow("mixed")
    async def mixed(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "meta", "metadata": {"intent": "greet", "score": 0.5, "n": 3}}
        yield {"type": "citation", "data": {"url": "https://example.org/é", "n": [1, 2.5, None]}}
        yield {"type": "text", "text": 'quotes " and\nnewlines ✓', "model": "m"}
        yield {"type": "text", "text": "ctx", "context": {"conversationId": "c", "cursor": "1"}}
        yield {"type": "data", "data": {"big": 2**53 + 1, "float": 1.0, "deep": [[{"a": {}}]]}}

    @registry.flow("echo-request")
    async def echo_request(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "data", "data": request.model_dump(mode="json", exclude_none=True)}

    @registry.flow("crash")
    async def crash(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "before"}
        raise ValueError("boom")

    @registry.flow("fails")
    async def fails(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "partial"}
        yield error_event("UNAVAILABLE", "upstream down", {"retry": True})

    @registry.flow("slow", timeout=0.5)
    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "waiting"}
        await asyncio.Event().wait()

    return registry


CASES = [
    chat("the quick brown fox"),
    chat("with options", model="m-1", temperature=0.5, metadata={"k": "v", "n": 2}),
    chat("hello", flow="guarded"),
    chat("tell me the secret", flow="guarded"),
    chat("x", flow="mixed"),
    chat(
        "x",
        flow="echo-request",
        sessionId="s",
        client_id="c",
        maxTokens=9,
        temperature=1,
        tools=[{"type": "function"}],
        sourceLanguage="ja",
    ),
    chat("x", flow="crash"),
    chat("x", flow="fails"),
    chat("x", flow="slow"),
]


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[httpx.AsyncClient, GrpcClient]]:
    runtime = FlowRuntime(flows())
    async with (
        serve_asgi(SSEServer(runtime).app) as http_address,
        running(GrpcServer(runtime)) as grpc_address,
        httpx.AsyncClient(base_url=f"http://{http_address}", timeout=TIMEOUT) as http,
        GrpcClient(grpc_address, timeout=TIMEOUT) as client,
    ):
        yield http, client


def types(value: Any) -> Any:
    """``value`` with every leaf replaced by its type name."""
    if isinstance(value, dict):
        return {key: types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [types(item) for item in value]
    return type(value).__name__


async def over_sse(http: httpx.AsyncClient, payload: dict[str, Any]) -> list[Event]:
    response = await http.post("/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    return [data for name, _, data in parse_sse(response.text) if name != ":"]


@pytest.mark.parametrize("payload", CASES, ids=lambda p: p.get("flow", "default"))
async def test_both_transports_deliver_the_same_events(
    endpoints: tuple[httpx.AsyncClient, GrpcClient], payload: dict[str, Any]
) -> None:
    http, client = endpoints
    sse = await over_sse(http, payload)
    over_grpc = [event async for event in client.stream(None, payload)]
    assert normalised(over_grpc) == normalised(sse)
    assert sse[-1]["type"] in ("done", "error")
    # Key for key and type for type (== alone takes 3 == 3.0): ints stay ints.
    assert types(over_grpc) == types(sse)


async def test_many_concurrent_grpc_streams_match_sse(
    endpoints: tuple[httpx.AsyncClient, GrpcClient],
) -> None:
    http, client = endpoints
    expected = [await over_sse(http, payload) for payload in CASES]
    results = await asyncio.gather(*(client.invoke(None, payload) for payload in CASES * 3))
    assert normalised([r["events"] for r in results]) == normalised(expected * 3)


async def test_a_terminal_error_maps_to_matching_statuses(
    endpoints: tuple[httpx.AsyncClient, GrpcClient],
) -> None:
    _, client = endpoints
    for payload, code in [
        (chat("the secret", flow="guarded"), "PERMISSION_DENIED"),
        (chat("x", flow="fails"), "UNAVAILABLE"),
        (chat("x", flow="slow"), "DEADLINE_EXCEEDED"),
        (chat("x", flow="crash"), "INTERNAL"),
    ]:
        raw = await raw_stream(client.channel, payload)
        assert raw.events[-1]["error"]["code"] == code
        assert raw.status is grpc_status_for(code) is getattr(grpc.StatusCode, code)


@pytest.mark.parametrize(
    "payload",
    [
        chat("x", flow="missing"),
        {"messages": []},
        chat("x", temperature=7),
        chat("x", unknown_field=True),
    ],
)
async def test_errors_before_the_stream_carry_the_same_error(
    endpoints: tuple[httpx.AsyncClient, GrpcClient], payload: dict[str, Any]
) -> None:
    # SSE answers with an HTTP status and a JSON body; gRPC with a status and the
    # llmbrick-error-bin trailer. The error object is the same, the statuses match.
    http, client = endpoints
    response = await http.post("/chat/completions", json=payload)
    sse_error = response.json()["error"]
    raw = await raw_stream(client.channel, payload)
    assert raw.events == []
    assert raw.error == sse_error
    assert raw.details == sse_error["message"]
    assert raw.status is grpc_status_for(sse_error["code"])
    assert response.status_code == http_status_for(sse_error["code"])
    assert http_status_for(raw.status.name) == response.status_code
