"""Flows and raw-socket helpers shared by the WebSocket adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as raw_connect

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, Pipeline
from llmbrick.bricks import EchoLLM
from llmbrick_websocket import WebSocketServer
from tests.support import TIMEOUT, serve_asgi


def chat(text: str, flow: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat request body."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if flow is not None:
        body["flow"] = flow
    return body


class Hold:
    """A flow that says "<tag> ready", waits for ``release`` and records its ``finally``."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.closed: list[str] = []
        self.release = asyncio.Event()
        self._changed = asyncio.Event()

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        tag = request.messages[-1].content
        self.started.append(tag)
        self._changed.set()
        try:
            yield {"type": "text", "text": f"{tag} ready"}
            await self.release.wait()
            yield {"type": "text", "text": f"{tag} released"}
        finally:
            self.closed.append(tag)
            self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (bounded) until ``predicate`` holds after some flow started or closed."""
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class PingPong:
    """Two flows that take turns: ``a`` yields, then ``b``, then ``a`` ... for ``rounds``."""

    def __init__(self, rounds: int = 3) -> None:
        self.rounds = rounds
        self.turns = [asyncio.Event() for _ in range(2 * rounds)]

    async def a(self, request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(self.rounds):
            if i:
                await self.turns[2 * i - 1].wait()
            yield {"type": "text", "text": f"a{i}"}
            self.turns[2 * i].set()

    async def b(self, request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(self.rounds):
            await self.turns[2 * i].wait()
            yield {"type": "text", "text": f"b{i}"}
            self.turns[2 * i + 1].set()


def registry(hold: Hold | None = None, pingpong: PingPong | None = None) -> FlowRegistry:
    """The flows most tests use: ``default`` (echo), ``hold``, ``a``/``b`` (ping-pong)."""
    flows = FlowRegistry()
    flows.register("default", Pipeline().add_brick(EchoLLM()))
    if hold is not None:
        flows.register("hold", hold.flow)
    if pingpong is not None:
        flows.register("a", pingpong.a)
        flows.register("b", pingpong.b)
    return flows


@asynccontextmanager
async def served(server: WebSocketServer, **config: Any) -> AsyncIterator[str]:
    """Run ``server`` under uvicorn with its own WebSocket settings; yields the ws:// URL."""
    settings = {**server.uvicorn_options(), **config}
    async with serve_asgi(server.app, **settings) as address:
        yield f"ws://{address}/ws"


@asynccontextmanager
async def raw(url: str, **options: Any) -> AsyncIterator[ClientConnection]:
    """A bare ``websockets`` client: no compression, no client pings."""
    options.setdefault("compression", None)
    options.setdefault("ping_interval", None)
    async with raw_connect(url, **options) as ws:
        yield ws


async def send(ws: ClientConnection, frame: dict[str, Any] | str | bytes) -> None:
    """Send a frame: a dict as JSON text, a str as text, bytes as a binary frame."""
    await ws.send(orjson.dumps(frame).decode() if isinstance(frame, dict) else frame)


async def recv(ws: ClientConnection, *, started: bool = False) -> dict[str, Any]:
    """The next server frame, decoded (bounded wait); ``started`` replies skipped unless asked."""
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if started or frame.get("type") != "started":
            return frame


async def collect(ws: ClientConnection, *ids: str) -> dict[str, list[Event]]:
    """Read frames until every stream in ``ids`` has had its terminal event."""
    events: dict[str, list[Event]] = {stream_id: [] for stream_id in ids}
    open_ids = set(ids)
    while open_ids:
        frame = await recv(ws)
        assert "event" in frame, frame
        events[frame["id"]].append(frame["event"])
        if frame["event"]["type"] in ("done", "error"):
            open_ids.discard(frame["id"])
    return events


async def run_events(runtime: FlowRuntime, payload: dict[str, Any]) -> list[Event]:
    """What ``FlowRuntime.run`` yields in-process for ``payload``."""
    return [event async for event in runtime.run(None, payload)]
