"""Two gateways chained through the OpenAI API: client -> A (guard + OpenAILLM) -> B.

Gateway B serves an echo pipeline (and flows that hold or fail) on its OpenAI
router; gateway A's pipeline is a keyword guard and an ``OpenAILLM`` brick whose
base URL is B's ``/v1``, passing on the model the client names. A's clients use
each of its transports (SSE, WebSocket, gRPC) and see B's answers, B's errors
under their own codes, and their cancellation reach B's flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmbrick import (
    ChatRequest,
    DeadlineExceeded,
    Event,
    FlowRegistry,
    FlowRuntime,
    OpenAILLM,
    Pipeline,
)
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_gateway import Gateway
from llmbrick_grpc import GrpcClient
from llmbrick_sse import SSEClient, create_openai_router
from llmbrick_websocket import connect
from tests.openai.flows import user
from tests.support import TIMEOUT, serve_gateway

TRANSPORTS = ("sse", "websocket", "grpc")


@dataclass
class Upstream:
    """Gateway B's flows and what tests wait on."""

    registry: FlowRegistry = field(default_factory=FlowRegistry)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        pipeline = Pipeline().add_brick(KeywordGuard(["nuke"])).add_brick(EchoLLM())
        self.registry.register("default", pipeline, aliases=["echo-model"])

        @self.registry.flow("hold")
        async def hold(request: ChatRequest) -> AsyncIterator[Event]:
            try:
                yield {"type": "text", "text": "started"}
                self.started.set()
                await asyncio.Event().wait()
            finally:
                self.finished.set()

        @self.registry.flow("late")
        async def late(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "almost"}
            raise DeadlineExceeded("B's flow ran out of time")


@dataclass
class Chain:
    upstream: Upstream
    a: Gateway

    @asynccontextmanager
    async def client(self, transport: str) -> AsyncIterator[Any]:
        """A client of gateway A over ``transport``: each has ``stream(flow, request)``."""
        urls = self.a.urls
        if transport == "sse":
            async with SSEClient(urls["sse"].removesuffix("/chat/completions")) as sse:
                yield sse
        elif transport == "websocket":
            async with connect(urls["websocket"]) as ws:
                yield ws
        else:
            async with GrpcClient(urls["grpc"].removeprefix("grpc://")) as grpc:
                yield grpc

    async def events(self, transport: str, request: dict[str, Any]) -> list[Event]:
        async with self.client(transport) as client:
            return [event async for event in client.stream("default", request)]


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    upstream = Upstream()
    runtime_b = FlowRuntime(upstream.registry)
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(
            serve_gateway(
                Gateway(
                    runtime_b,
                    http_port=0,
                    transports=["sse"],
                    routes=[create_openai_router(runtime_b)],
                    out=None,
                )
            )
        )
        base_url = b.urls["flows"].removesuffix("/flows") + "/v1"
        # model=None: the brick asks B for the model the client named.
        llm = OpenAILLM(None, base_url=base_url, api_key="sk-a-to-b", max_retries=0)
        pipeline = Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(llm)
        a = await stack.enter_async_context(
            serve_gateway(Gateway(pipeline, http_port=0, grpc_port=0, out=None))
        )
        yield Chain(upstream, a)


def ask(text: str, model: str = "default") -> dict[str, Any]:
    return {"messages": user(text), "model": model}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_text_from_b_arrives_with_its_usage(chain: Chain, transport: str) -> None:
    events = await chain.events(transport, ask("hello over two gateways", "echo-model"))
    assert "".join(e.get("text", "") for e in events) == "hello over two gateways"
    assert {e["model"] for e in events if e["type"] == "text"} == {"echo-model"}
    (meta,) = [e for e in events if e["type"] == "meta"]
    assert meta["metadata"] == {
        "finishReason": "stop",
        "usage": {"promptTokens": 0, "completionTokens": 4, "totalTokens": 4},
    }
    assert events[-1]["type"] == "done"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_guard_on_a_rejects_before_b_is_asked(chain: Chain, transport: str) -> None:
    events = await chain.events(transport, ask("a bomb"))
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"]["code"] == "PERMISSION_DENIED"
    assert events[0]["error"]["details"]["guard"] == "keyword-guard"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_guard_on_b_is_a_content_filter_finish_on_a(chain: Chain, transport: str) -> None:
    events = await chain.events(transport, ask("a nuke"))
    assert [e["type"] for e in events] == ["meta", "done"]
    assert events[0]["metadata"]["finishReason"] == "content_filter"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        ("nope", "NOT_FOUND", "The model 'nope' does not exist"),
        ("late", "DEADLINE_EXCEEDED", "B's flow ran out of time"),
    ],
    ids=["unknown-model", "mid-stream"],
)
async def test_an_error_on_b_arrives_under_its_code(
    chain: Chain, transport: str, model: str, code: str, words: str
) -> None:
    events = await chain.events(transport, ask("x", model))
    error = events[-1]
    assert error["type"] == "error"
    assert error["error"]["code"] == code
    assert words in error["error"]["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_on_a_reaches_bs_flow(chain: Chain, transport: str) -> None:
    async with chain.client(transport) as client:
        stream = client.stream("default", ask("x", "hold"))
        first = await asyncio.wait_for(anext(aiter(stream)), TIMEOUT)
        assert first["text"] == "started"
        await stream.aclose()  # each client's stream cancels on the server when closed
        await asyncio.wait_for(chain.upstream.finished.wait(), TIMEOUT)
