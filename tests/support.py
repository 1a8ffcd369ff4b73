"""Helpers shared by the adapter, contract and example tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmbrick import ChatRequest, Event

#: One unit for every timeout in the suite, so a slow machine needs one change.
TIMEOUT = 10.0


def bound_socket(send_buffer: int | None = None) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 with a port chosen by the kernel.

    Args:
        send_buffer: ``SO_SNDBUF`` for the connections it accepts (they inherit it),
            to make a slow client's backlog reach the server quickly in tests.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@asynccontextmanager
async def serve_asgi(
    app: Any, settings: Any = None, sock: socket.socket | None = None, **config: Any
) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn, with llmbrick's connection limits, on a real socket.

    The socket is bound and listening before the server starts, so clients can
    connect at once (the kernel queues them) without polling for readiness.

    Args:
        app: the ASGI app.
        settings: ``llmbrick_http.HttpSettings`` (default: the defaults).
        sock: a listening socket to use (default: a new one on a free port).
        **config: more uvicorn settings.

    Yields:
        ``host:port``.
    """
    import uvicorn

    from llmbrick_http import HttpSettings, uvicorn_config

    sock = sock or bound_socket()
    host, port = sock.getsockname()
    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 1,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn_config(app, settings or HttpSettings(), **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"{host}:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, TIMEOUT)
        finally:
            sock.close()


def parse_sse(body: str) -> list[tuple[str, str, Any]]:
    """Split an SSE body into ``(event, id, data)`` tuples; comments become ``(":", "", text)``."""
    import json

    frames: list[tuple[str, str, Any]] = []
    for block in body.split("\n\n"):
        if not block:
            continue
        name, ident, data = "message", "", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                frames.append((":", "", value))
            elif field == "event":
                name = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)
        if data:
            frames.append((name, ident, json.loads("\n".join(data))))
    return frames


async def sse_events(
    address: str, payload: dict[str, Any], path: str = "/chat/completions"
) -> list[Any]:
    """POST ``payload`` to an SSE server at ``address`` and return the event dicts it streamed."""
    import httpx

    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
        response = await client.post(path, json=payload)
        assert response.status_code == 200, response.text
        return [data for name, _, data in parse_sse(response.text) if name != ":"]


@asynccontextmanager
async def serve_gateway(gateway: Any) -> AsyncIterator[Any]:
    """Run a ``llmbrick_gateway.Gateway`` in this event loop; stops (draining) on exit."""
    task = asyncio.create_task(gateway.serve())
    await asyncio.wait_for(gateway.started.wait(), TIMEOUT)
    try:
        yield gateway
    finally:
        gateway.stop()
        await asyncio.wait_for(task, TIMEOUT)


async def quiescent(count: Callable[[], int], turns: int = 200) -> int:
    """Wait until the flow stops producing (for ``turns`` loop turns in a row); returns the count.

    The server runs in this event loop, and a runnable flow produces on every
    turn, so a count that stays put for many turns means the flow is waiting
    for the client.
    """
    still = 0
    last = -1
    for _ in range(200_000):
        await asyncio.sleep(0)
        still = still + 1 if count() == last else 0
        last = count()
        if still >= turns:
            return last
    raise AssertionError(f"the flow never stopped producing ({last} events)")


async def until(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds (for state another
    thread or process changes, with no event to wait on); fails after ``TIMEOUT``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} never held")
        await asyncio.sleep(0.005)


class Gate:
    """A flow of ``count`` texts that waits at ``hold`` for ``release``; records its end."""

    def __init__(self, count: int = 6, hold: int = 3) -> None:
        self.count = count
        self.hold = hold
        self.release = asyncio.Event()
        self.ended: list[str] = []
        self.done = asyncio.Event()

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        try:
            for n in range(1, self.count + 1):
                if n == self.hold:
                    await self.release.wait()
                yield {"type": "text", "text": f"t{n}"}
            self.ended.append("done")
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        finally:
            self.done.set()
