"""A flow that never awaits cannot freeze the server: health answers, a disconnect stops it.

The runtime lets the loop turn every few events, whatever the flow does, so other
requests are served while it streams, and the transport sees its client leave.
(gRPC's version of this is in test_grpc_overload.py.)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import create_http_routers
from llmbrick_websocket import create_router
from tests.support import TIMEOUT, serve_asgi

TOTAL = 1_000_000


class Greedy:
    """``TOTAL`` events and never an await; counts what it made, notes when it stopped."""

    def __init__(self) -> None:
        self.produced = 0
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        self.started.set()
        try:
            for n in range(TOTAL):
                self.produced = n + 1
                yield {"type": "text", "text": "t"}
        finally:
            self.stopped.set()


def app(greedy: Greedy) -> Any:
    registry = FlowRegistry()
    registry.register("default", greedy.flow)
    runtime = FlowRuntime(registry)
    settings = HttpSettings()
    routers = create_http_routers(runtime, settings=settings)
    routers.append(create_router(runtime, settings=settings))
    return build_app(routers, settings)


async def healthy_while_streaming(address: str, greedy: Greedy) -> None:
    await asyncio.wait_for(greedy.started.wait(), TIMEOUT)
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
        for _ in range(5):
            assert (await client.get("/healthz")).status_code == 200
    assert 0 < greedy.produced < TOTAL, "health answered only once the flow was done"


async def leaves_mid_stream(kind: str, address: str, greedy: Greedy) -> None:
    host, port = address.split(":")
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("fast_reader.py")),
        kind,
        host,
        port,
        stdout=asyncio.subprocess.PIPE,
    )
    assert reader.stdout is not None
    try:
        assert await asyncio.wait_for(reader.stdout.readline(), TIMEOUT) == b"reading\n"
        await healthy_while_streaming(address, greedy)
    finally:
        reader.kill()  # the client leaves mid-stream, as abruptly as a process can
        await reader.wait()
    await asyncio.wait_for(greedy.stopped.wait(), TIMEOUT)
    assert greedy.produced < TOTAL, "the flow ran to its end after the client left"


async def test_sse_stays_responsive_and_sees_the_client_leave() -> None:
    greedy = Greedy()
    async with serve_asgi(app(greedy)) as address:
        await leaves_mid_stream("sse", address, greedy)


async def test_websocket_stays_responsive_and_sees_the_client_leave() -> None:
    greedy = Greedy()
    async with serve_asgi(app(greedy)) as address:
        await leaves_mid_stream("ws", address, greedy)
