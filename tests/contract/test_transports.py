"""The contract: every scenario over SSE, WebSocket and gRPC against one running gateway.

Each transport must deliver the same events (ids included) as ``FlowRuntime.run``, the same
terminal error for each bad input, and cancel the flow when its client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, PermissionDenied, Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_gateway import Gateway, connect
from tests.support import TIMEOUT, serve_gateway

TRANSPORTS = ["sse", "websocket", "grpc"]


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


class Flows:
    """The flows under test, with the hooks the cancellation scenario watches."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.registry = FlowRegistry()
        registry = self.registry
        registry.register(
            "default", Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM())
        )

        @registry.flow("rich")
        async def rich(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "meta", "metadata": {"n": 3, "ratio": 0.5, "ok": True, "none": None}}
            yield {"type": "text", "text": "héllo 👋\nworld", "model": "m"}
            yield {"type": "tool_call", "data": {"name": "f", "args": {"x": [1, 2.5, "3"]}}}
            yield {"type": "text", "text": "", "context": {"conversationId": "c1", "cursor": "9"}}
            yield {"type": "done", "metadata": {"tokens": 2}}

        @registry.flow("echo-request")
        async def echo_request(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "data", "data": request.model_dump(mode="json", exclude_none=True)}

        @registry.flow("empty")
        async def empty(request: ChatRequest) -> AsyncIterator[Event]:
            return
            yield {"type": "text", "text": "never"}

        @registry.flow("crash")
        async def crash(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "partial"}
            raise RuntimeError("secret internals")

        @registry.flow("denied")
        async def denied(request: ChatRequest) -> AsyncIterator[Event]:
            raise PermissionDenied("not you", details={"who": "x"})
            yield {"type": "text", "text": "never"}

        @registry.flow("slow", timeout=0.2)
        async def slow(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "thinking"}
            await asyncio.Event().wait()

        @registry.flow("hold")
        async def hold(request: ChatRequest) -> AsyncIterator[Event]:
            try:
                yield {"type": "text", "text": "started"}
                self.started.set()
                await asyncio.Event().wait()
            finally:
                self.finished.set()


@pytest.fixture
async def flows() -> Flows:
    return Flows()


@pytest.fixture
async def gateway(flows: Flows) -> AsyncIterator[Gateway]:
    runtime = FlowRuntime(flows.registry, max_streams=4)
    async with serve_gateway(Gateway(runtime, http_port=0, grpc_port=0, out=None)) as gateway:
        yield gateway


def url(gateway: Gateway, transport: str) -> str:
    return gateway.urls[transport]


async def collect(gateway: Gateway, transport: str, flow: str, request: Any) -> list[Event]:
    async with connect(url(gateway, transport)) as client:
        return [event async for event in client.stream(flow, request)]


async def expected(runtime: FlowRuntime, flow: str, request: dict[str, Any]) -> list[Event]:
    return [event async for event in runtime.run(flow, request)]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("flow", "request_"),
    [
        ("default", ask("hello big world")),
        ("rich", ask("x")),
        ("empty", ask("x")),
        (
            "echo-request",
            ask(
                "options",
                model="m-1",
                temperature=0.5,
                maxTokens=7,
                sessionId="s",
                clientId="c",
                sourceLanguage="fr",
                tools=[{"type": "function", "name": "f"}],
                toolChoice="auto",
                metadata={"k": "v", "n": 2, "f": 2.0, "nested": {"l": [1, None]}},
                stream=True,
            ),
        ),
        ("default", ask("a bomb")),
        ("denied", ask("x")),
        ("nope", ask("x")),
        ("default", {"messages": [{"role": "robot", "content": "x"}], "maxTokens": 0}),
        ("default", {"messages": []}),
        ("default", ask("x", surprise=1)),
    ],
)
async def test_the_same_events_as_the_runtime(
    gateway: Gateway, transport: str, flow: str, request_: dict[str, Any]
) -> None:
    got = await collect(gateway, transport, flow, request_)
    want = await expected(gateway.runtime, flow, request_)
    assert got == want
    for event in got:  # ints stay ints, floats floats, across every transport
        assert [type(v) for v in _leaves(event)] == [
            type(v) for v in _leaves(want[got.index(event)])
        ]


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _leaves(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("flow", "request_", "code"),
    [
        ("nope", ask("x"), "NOT_FOUND"),
        ("default", {"messages": [{"role": "robot", "content": "x"}]}, "INVALID_ARGUMENT"),
        ("default", ask("bomb"), "PERMISSION_DENIED"),
        ("crash", ask("x"), "INTERNAL"),
        ("slow", ask("x"), "DEADLINE_EXCEEDED"),
    ],
)
async def test_the_same_error_code_for_each_bad_input(
    gateway: Gateway, transport: str, flow: str, request_: dict[str, Any], code: str
) -> None:
    events = await collect(gateway, transport, flow, request_)
    last = events[-1]
    assert last["type"] == "error" and last["progress"] == "ERROR"
    assert last["error"]["code"] == code
    assert [e["id"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    if code == "INTERNAL":
        assert "secret" not in last["error"]["message"]
        assert events[0]["text"] == "partial"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_too_many_streams_is_resource_exhausted(
    gateway: Gateway, flows: Flows, transport: str
) -> None:
    holders = []
    async with connect(url(gateway, "sse")) as client:
        for _ in range(4):  # the runtime's max_streams
            stream = client.stream("hold", ask("x"))
            assert (await anext(stream))["text"] == "started"
            holders.append(stream)
        events = await collect(gateway, transport, "default", ask("one more"))
        for stream in holders:
            await stream.aclose()
    assert events == [
        {
            "type": "error",
            "error": {
                "code": "RESOURCE_EXHAUSTED",
                "message": "the server runs its maximum of 4 streams",
                "details": {"retryAfter": 1.0, "limit": "server"},
            },
            "id": "1",
            "progress": "ERROR",
        }
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_disconnect_cancels_the_flow(
    gateway: Gateway, flows: Flows, transport: str
) -> None:
    async with connect(url(gateway, transport)) as client:
        async with aclosing(client.stream("hold", ask("x"))) as stream:
            assert (await anext(stream))["text"] == "started"
    await asyncio.wait_for(flows.finished.wait(), TIMEOUT)


async def test_one_registry_serves_every_transport_at_once(gateway: Gateway) -> None:
    together = asyncio.Barrier(len(TRANSPORTS))

    # Registered after the gateway started: visible on every transport all the same.
    @gateway.runtime.registry.flow("late")
    async def late(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "first"}
        await asyncio.wait_for(together.wait(), TIMEOUT)  # all three streams are live at once
        for word in request.messages[-1].content.split():
            yield {"type": "text", "text": word}

    request = ask("one two three")
    results = await asyncio.gather(
        *(collect(gateway, transport, "late", request) for transport in TRANSPORTS)
    )
    texts = ["first", "one", "two", "three"]
    for transport, result in zip(TRANSPORTS, results, strict=True):
        assert [e.get("text") for e in result] == [*texts, None], transport
        assert [e["id"] for e in result] == ["1", "2", "3", "4", "5"], transport
