"""The same flows over SSE and WebSocket, on one app and one runtime, give the same events."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from litestar import Litestar

from llmbrick import ChatRequest, ErrorInfo, Event, FlowRegistry, FlowRuntime, Pipeline, error_event
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_sse import create_router as sse_router
from llmbrick_websocket import connect
from llmbrick_websocket import create_router as websocket_router
from tests.support import TIMEOUT, serve_asgi


def flows() -> FlowRegistry:
    registry = FlowRegistry()
    registry.register("default", Pipeline().add_brick(EchoLLM()))
    registry.register(
        "guarded", Pipeline().add_brick(KeywordGuard(["secret"])).add_brick(EchoLLM())
    )

    @registry.flow("mixed")
    async def mixed(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "meta", "metadata": {"intent": "greet", "score": 0.5}}
        yield {"type": "citation", "data": {"url": "https://example.org/é", "n": [1, 2.5, None]}}
        yield {"type": "text", "text": 'quotes " and\nnewlines', "model": "m"}

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


def chat(text: str, flow: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if flow is not None:
        body["flow"] = flow
    return body


def parse_sse(body: str) -> list[Event]:
    events: list[Event] = []
    for block in body.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        event: Event = orjson.loads(fields["data"])
        assert fields["id"] == event["id"]
        assert fields["event"] == ("error" if event["type"] == "error" else "message")
        events.append(event)
    return events


def normalised(value: Any) -> Any:
    # Stream ids are random, so they differ per transport.
    return orjson.loads(re.sub(rb"stream [A-Za-z0-9_-]{16}", b"stream ?", orjson.dumps(value)))


CASES = [
    chat("the quick brown fox"),
    chat("with options", model="m-1", temperature=0.5, metadata={"k": "v"}),
    chat("hello", flow="guarded"),
    chat("tell me the secret", flow="guarded"),
    chat("x", flow="mixed"),
    chat("x", flow="crash"),
    chat("x", flow="fails"),
    chat("x", flow="slow"),
]


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    runtime = FlowRuntime(flows())
    app = Litestar([sse_router(runtime), websocket_router(runtime)], logging_config=None)
    async with (
        serve_asgi(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        yield http, f"ws://{address}/ws"


@pytest.mark.parametrize("payload", CASES, ids=lambda p: p.get("flow", "default"))
async def test_both_transports_deliver_the_same_events(
    endpoints: tuple[httpx.AsyncClient, str], payload: dict[str, Any]
) -> None:
    http, url = endpoints
    response = await http.post("/chat/completions", json=payload)
    assert response.status_code == 200
    over_sse = parse_sse(response.text)
    async with connect(url) as ws:
        over_websocket = (await ws.invoke(None, payload))["events"]
    assert normalised(over_websocket) == normalised(over_sse)
    assert over_sse[-1]["type"] in ("done", "error")


async def test_many_concurrent_websocket_streams_match_sse(
    endpoints: tuple[httpx.AsyncClient, str],
) -> None:
    http, url = endpoints
    over_sse = [parse_sse((await http.post("/chat/completions", json=p)).text) for p in CASES]
    async with connect(url) as ws:
        results = await asyncio.gather(*(ws.invoke(None, payload) for payload in CASES))
    assert normalised([r["events"] for r in results]) == normalised(over_sse)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (chat("x", flow="missing"), 404),
        ({"messages": []}, 422),
        (chat("x", temperature=7), 422),
    ],
)
async def test_errors_before_the_stream_carry_the_same_error(
    endpoints: tuple[httpx.AsyncClient, str], payload: dict[str, Any], status: int
) -> None:
    # SSE answers these with an HTTP status and a JSON body; WebSocket with the
    # stream's one terminal event. The error object is the same.
    http, url = endpoints
    response = await http.post("/chat/completions", json=payload)
    assert response.status_code == status
    sse_error: ErrorInfo = response.json()["error"]
    async with connect(url) as ws:
        result = await ws.invoke(None, payload)
    assert result["events"] == [
        {"type": "error", "error": sse_error, "id": "1", "progress": "ERROR"}
    ]
