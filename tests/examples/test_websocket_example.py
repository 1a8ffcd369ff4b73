"""The WebSocket example serves what its docstring promises."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path
from typing import Any

from llmbrick_websocket import WebSocketServer, connect
from tests.support import TIMEOUT, serve_asgi

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "websocket_chat.py"


def load() -> WebSocketServer:
    namespace: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="websocket_chat")
    server = namespace["server"]
    assert isinstance(server, WebSocketServer)
    return server


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_example_streams_its_flows_concurrently_on_one_socket() -> None:
    server = load()
    assert server.runtime.registry.names() == ["default", "countdown"]
    async with (
        serve_asgi(server.app, **server.uvicorn_options()) as address,
        connect(f"ws://{address}/ws") as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            echo, count, blocked = await asyncio.gather(
                ws.invoke("default", chat("hello from the example")),
                ws.invoke("countdown", chat("3")),
                ws.invoke("default", chat("something forbidden")),
            )
    assert echo["text"] == "hello from the example" and echo["error"] is None
    assert count["text"] == "3... 2... 1... "
    assert count["events"][-2] == {
        "type": "data",
        "data": {"liftoff": True},
        "id": "4",
        "progress": "IN_PROGRESS",
    }
    assert blocked["error"] is not None and blocked["error"]["code"] == "PERMISSION_DENIED"
