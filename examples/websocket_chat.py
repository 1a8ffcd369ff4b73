"""A chat server over WebSocket: a guarded echo model plus a hand-written flow.

Run it with ``python examples/websocket_chat.py`` and connect to
``ws://127.0.0.1:8000/ws``; from Python::

    from llmbrick_websocket import connect

    async with connect("ws://127.0.0.1:8000/ws") as ws:
        async for event in ws.stream("default", {"messages": [{"role": "user", "content": "hi"}]}):
            print(event)

or from a browser console, see docs/websocket.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmbrick import ChatRequest, Event, Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_websocket import WebSocketServer

__all__ = ["server"]

pipeline = (
    Pipeline(description="Echoes the last user message word by word, unless it is blocked.")
    .add_brick(KeywordGuard(["forbidden"]))
    .add_brick(EchoLLM(delay=0.02, model="echo"))
)

server = WebSocketServer(pipeline)


@server.flow("countdown", description="Counts down from the number in the message.")
async def countdown(request: ChatRequest) -> AsyncIterator[Event]:
    """Counts down from the number in the last message (at most 10), one step per event."""
    text = request.messages[-1].content.strip()
    start = min(int(text), 10) if text.isdigit() else 3
    for n in range(start, 0, -1):
        yield {"type": "text", "text": f"{n}... "}
        await asyncio.sleep(0.05)
    yield {"type": "data", "data": {"liftoff": True}}


if __name__ == "__main__":
    server.run()
