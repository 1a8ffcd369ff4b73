"""The HTTP protocol's per-connection state: what every open stream holds, kept small."""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_http.host import _Event
from llmbrick_sse import SSEServer
from tests.support import TIMEOUT, serve_asgi


async def test_an_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    event = _Event(False)
    assert not event.is_set()
    first = asyncio.create_task(event.wait())
    second = asyncio.create_task(event.wait())
    dropped = asyncio.create_task(event.wait())
    await asyncio.sleep(0)  # let the three start waiting
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert event._waiters is not None and len(event._waiters) == 2
    event.set()
    assert await first is True and await second is True
    assert event._waiters == []
    assert await event.wait() is True  # set: no wait at all
    event.clear()
    third = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not third.done()
    event.set()
    assert await asyncio.wait_for(third, TIMEOUT) is True


def _heavy(holder: object) -> list[str]:
    """Names of ``holder``'s attributes holding an ``asyncio.Event`` or a deque."""
    return [
        name
        for name, value in vars(holder).items()
        if isinstance(value, asyncio.Event | collections.deque)
    ]


async def test_an_open_stream_holds_no_asyncio_event_or_deque_of_uvicorns() -> None:
    # A uvicorn upgrade that renames what the protocol replaces would bring them back
    # silently (about 2 KB per connection); this says where.
    started, release = asyncio.Event(), asyncio.Event()

    async def waits(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "a"}
        started.set()
        await release.wait()

    registry = FlowRegistry()
    registry.register("default", waits)
    server = SSEServer(FlowRuntime(registry))
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    async with serve_asgi(server.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                await asyncio.wait_for(started.wait(), TIMEOUT)
                open_ = [
                    o
                    for o in gc.get_objects()
                    if isinstance(o, HttpToolsProtocol) and o.cycle is not None
                ]
                assert len(open_) == 1
                protocol = open_[0]
                assert _heavy(protocol) == []
                assert _heavy(protocol.flow) == []
                assert _heavy(protocol.cycle) == []
                # The limits' own state lives in slots, not in the instance dict.
                assert "_head_bytes" not in vars(protocol)
                release.set()
                text = (await response.aread()).decode()
    assert '"type":"text"' in text and '"type":"done"' in text
