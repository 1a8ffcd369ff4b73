"""Kept streams over WebSocket: the started reply, resume frames on any socket, explicit cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from llmbrick import FlowRegistry, FlowRuntime, MemoryStore
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import create_http_routers
from llmbrick_websocket import create_router
from tests.adapters.test_sse_resume import texts
from tests.adapters.websocket_support import chat, collect, raw, recv, send
from tests.support import TIMEOUT, Gate, parse_sse, serve_asgi


def app(gate: Gate) -> Any:
    registry = FlowRegistry()
    registry.register("continue", gate.flow, on_disconnect="continue")
    registry.register("cancel", gate.flow, on_disconnect="cancel")
    runtime = FlowRuntime(registry, store=MemoryStore())
    settings = HttpSettings()
    routers = [
        *create_http_routers(runtime, settings=settings),
        create_router(runtime, settings=settings),
    ]
    return build_app(routers, settings)


def words(events: list[Any]) -> list[str]:
    return [
        e.get("text", e["type"]) if e["type"] != "error" else e["error"]["code"] for e in events
    ]


async def test_a_stream_started_on_one_socket_resumes_on_another() -> None:
    gate = Gate()
    async with serve_asgi(app(gate)) as address:
        url = f"ws://{address}/ws"
        async with raw(url) as first:
            await send(first, {"type": "start", "id": "a", "request": chat("x", flow="continue")})
            started = await recv(first, started=True)
            kept = started["streamId"]
            seen = [(await recv(first))["event"] for _ in range(2)]
        # The socket is gone; the flow goes on and a new socket picks up after event 2.
        gate.release.set()
        async with raw(url) as second:
            await send(second, {"type": "resume", "id": "b", "streamId": kept, "after": 2})
            assert (await recv(second, started=True))["streamId"] == kept
            rest = (await collect(second, "b"))["b"]
            # Past the end of a finished stream: only its terminal event.
            await send(second, {"type": "resume", "id": "c", "streamId": kept, "after": "99"})
            tail = (await collect(second, "c"))["c"]
    assert words(seen) + words(rest) == ["t1", "t2", "t3", "t4", "t5", "t6", "done"]
    assert [e["id"] for e in rest] == ["3", "4", "5", "6", "7"]
    assert words(tail) == ["done"]


async def test_cancel_frames_stop_the_flow_and_resume_errors_are_terminal_events() -> None:
    gate = Gate()
    async with serve_asgi(app(gate)) as address:
        async with raw(f"ws://{address}/ws") as ws:
            await send(ws, {"type": "start", "id": "a", "request": chat("x", flow="continue")})
            kept = (await recv(ws, started=True))["streamId"]
            assert (await recv(ws))["event"]["text"] == "t1"
            await send(ws, {"type": "cancel", "id": "a"})
            events = (await collect(ws, "a"))["a"]
            assert events[-1]["error"]["code"] == "CANCELLED"
            await asyncio.wait_for(gate.done.wait(), TIMEOUT)
            assert gate.ended == ["cancelled"]
            await send(ws, {"type": "resume", "id": "r", "streamId": kept})
            replay = (await collect(ws, "r"))["r"]
            assert words(replay) == ["t1", "t2", "CANCELLED"]
            await send(ws, {"type": "resume", "id": "n", "streamId": "nope"})
            missing = (await collect(ws, "n"))["n"]
            assert missing[-1]["error"]["code"] == "NOT_FOUND"
            await send(ws, {"type": "resume", "id": "m", "streamId": kept, "after": -3})
            problem = await recv(ws)
            assert problem["type"] == "error" and "after" in problem["error"]["message"]


async def test_any_transport_resumes_a_stream_started_on_another() -> None:
    gate = Gate()
    async with serve_asgi(app(gate)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            started = await client.post("/streams", json={**chat("x"), "flow": "continue"})
            kept = started.json()["streamId"]
            async with raw(f"ws://{address}/ws") as ws:
                await send(ws, {"type": "resume", "id": "w", "streamId": kept})
                assert (await recv(ws))["event"]["text"] == "t1"
                gate.release.set()
                over_ws = (await collect(ws, "w"))["w"]
            over_sse = parse_sse((await client.get(started.headers["location"])).text)
    assert ["t1", *words(over_ws)] == texts(over_sse)
