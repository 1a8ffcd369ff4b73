"""Every client resumes and cancels kept streams, whichever transport started them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from llmbrick import FlowNotFound, FlowRegistry, FlowRuntime, MemoryStore
from llmbrick.client import FlowClient
from llmbrick_grpc import GrpcClient, GrpcServer
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import SSEClient, create_http_routers
from llmbrick_websocket import WebSocketClient, create_router
from tests.adapters.grpc_support import running
from tests.support import TIMEOUT, Gate, serve_asgi

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "flow": "continue"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Gate, dict[str, FlowClient], httpx.AsyncClient]]:
    gate = Gate()
    registry = FlowRegistry()
    registry.register("continue", gate.flow, on_disconnect="continue")
    runtime = FlowRuntime(registry, store=MemoryStore())
    settings = HttpSettings()
    routers = create_http_routers(runtime, settings=settings)
    routers.append(create_router(runtime, settings=settings))
    async with AsyncExitStack() as stack:
        address = await stack.enter_async_context(serve_asgi(build_app(routers, settings)))
        grpc_address = await stack.enter_async_context(running(GrpcServer(runtime)))
        clients: dict[str, FlowClient] = {
            "sse": SSEClient(f"http://{address}"),
            "websocket": WebSocketClient(f"ws://{address}/ws"),
            "grpc": GrpcClient(grpc_address),
        }
        for client in clients.values():
            await stack.enter_async_context(client)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT)
        )
        yield gate, clients, http


@pytest.mark.parametrize("transport", ["sse", "websocket", "grpc"])
async def test_resume_after_an_id_and_cancel(
    served: tuple[Gate, dict[str, FlowClient], httpx.AsyncClient], transport: str
) -> None:
    gate, clients, http = served
    client = clients[transport]
    started = await http.post("/streams", json=HELLO)
    stream_id = started.json()["streamId"]
    gate.release.set()
    rest = [event async for event in client.resume(stream_id, 2)]
    assert [e.get("text", e["type"]) for e in rest] == ["t3", "t4", "t5", "t6", "done"]
    assert [e["id"] for e in rest] == ["3", "4", "5", "6", "7"]
    missing = [event async for event in client.resume("no-such-stream")]
    assert missing[-1]["error"]["code"] == "NOT_FOUND"
    # Cancel a running one by the server's id, then read what it made.
    gate.release.clear()
    stream_id = (await http.post("/streams", json=HELLO)).json()["streamId"]
    await client.cancel(stream_id)
    replay = [event async for event in client.resume(stream_id)]
    assert [e.get("text", e["type"]) for e in replay][:-1] == ["t1", "t2"]
    assert replay[-1]["error"]["code"] == "CANCELLED"
    if transport != "websocket":  # a WebSocket refusal comes back as an error frame
        with pytest.raises(FlowNotFound):
            await client.cancel("no-such-stream")
