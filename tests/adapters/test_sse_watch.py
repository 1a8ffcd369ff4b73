"""Watching streaming clients: one ping timer per endpoint, and disconnects on any server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_sse import SSEServer
from llmbrick_sse.watch import Pinger, Watch
from tests.support import TIMEOUT, serve_asgi


class _Quiet:
    """A watched stream as the pinger sees it: when it last wrote, and its pings."""

    def __init__(self, last_write: float) -> None:
        self.last_write = last_write
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        self.last_write = time.monotonic()


# Intervals of minutes, so that a loaded machine pausing between two lines changes nothing.


async def test_one_pass_pings_the_streams_due_and_sleeps_until_the_next_one() -> None:
    pinger = Pinger(160.0)  # a slack of 10 s
    now = time.monotonic()
    due = _Quiet(now - 160.0)  # an interval of silence
    almost = _Quiet(now - 155.0)  # within the slack: pinged now rather than late
    fresh = _Quiet(now - 40.0)  # due in 120 s
    for quiet in (due, almost, fresh):
        pinger.add(quiet)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    before = loop.time()
    pinger._tick()
    assert (due.pings, almost.pings, fresh.pings) == (1, 1, 0)
    timer = pinger._timer
    assert timer is not None
    # The next pass comes when `fresh` is due less the slack: never after it is due.
    assert before + 100.0 < timer.when() <= loop.time() + 110.0
    for quiet in (due, almost, fresh):
        pinger.discard(quiet)  # type: ignore[arg-type]
    assert pinger._timer is None and timer.cancelled()


async def test_a_ping_pass_never_comes_sooner_than_the_slack_after_the_last() -> None:
    pinger = Pinger(160.0)
    quiet = _Quiet(time.monotonic() - 145.0)  # due in 15 s: 5 s past the slack
    pinger.add(quiet)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    before = loop.time()
    pinger._tick()
    assert quiet.pings == 0
    assert pinger._timer is not None and pinger._timer.when() >= before + 10.0
    pinger.discard(quiet)  # type: ignore[arg-type]


def test_a_pinger_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pinger(0)


def _silent_server(started: asyncio.Event, ended: asyncio.Event, **options: Any) -> SSEServer:
    async def silent(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "a"}
            started.set()
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            ended.set()

    registry = FlowRegistry()
    registry.register("default", silent)
    return SSEServer(FlowRuntime(registry), **options)


_BODY = b'{"messages":[{"role":"user","content":"hi"}]}'
_REQUEST = (
    b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


@pytest.mark.parametrize("protocol", ["llmbrick", "uvicorn"])
async def test_a_client_leaving_ends_the_flow_under_either_http_protocol(protocol: str) -> None:
    # llmbrick's protocol reports the loss itself; under uvicorn's own (or any other
    # server) a task reads `receive` for http.disconnect.
    started, ended = asyncio.Event(), asyncio.Event()
    server = _silent_server(started, ended, ping_interval=0.05)
    config = {} if protocol == "llmbrick" else {"http": "httptools"}
    async with serve_asgi(server.app, **config) as address:
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_REQUEST)
        await asyncio.wait_for(started.wait(), TIMEOUT)
        # Two pings: the endpoint's one timer goes on pinging while the stream is quiet.
        seen = b""
        while seen.count(b": ping\n\n") < 2:
            seen += await asyncio.wait_for(reader.read(4096), TIMEOUT)
        assert seen.startswith(b"HTTP/1.1 200")
        writer.close()
        await asyncio.wait_for(ended.wait(), TIMEOUT)


async def test_the_watch_unhooks_itself_so_a_later_loss_does_not_reach_it() -> None:
    hooked: list[Any] = []

    def hook(callback: Any, remove: bool = False) -> None:
        if remove:
            hooked.remove(callback)
        else:
            hooked.append(callback)

    left: list[asyncio.Task[Any]] = []

    class _Stream:
        def disconnect(self, task: asyncio.Task[Any]) -> bool:
            left.append(task)
            return True

    async def nothing(message: Any) -> None:
        pass

    async def never() -> Any:
        await asyncio.get_running_loop().create_future()

    task = asyncio.current_task()
    assert task is not None
    scope: Any = {"llmbrick.on_lost": hook}
    watch = Watch(scope, never, nothing, _Stream(), task, b": ping\n\n", None)
    assert hooked == [watch]
    watch.stop()
    assert hooked == [] and left == []
    watch()  # a loss reported after the end (a race with the last write) changes nothing
    assert left == [] and not watch.disconnected


async def test_a_second_request_on_a_kept_alive_connection_is_watched_too() -> None:
    # The protocol hooks each request's watch in turn: the second stream's client leaving
    # reaches the second flow. (That an ended watch unhooks itself is the test above.)
    started, ended = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def flow(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "a"}
        if (request.metadata or {}).get("hold"):
            try:
                started.set()
                await asyncio.get_running_loop().create_future()
            finally:
                ended.set()
        finished.append(True)

    registry = FlowRegistry()
    registry.register("default", flow)
    server = SSEServer(FlowRuntime(registry))
    quick = b'{"messages":[{"role":"user","content":"hi"}]}'
    held = b'{"messages":[{"role":"user","content":"hi"}],"metadata":{"hold":true}}'
    async with serve_asgi(server.app) as address:
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        for body in (quick, held):
            writer.write(
                b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            if body is quick:
                # The whole first response: its chunked body ends with an empty chunk.
                await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), TIMEOUT)
        await asyncio.wait_for(started.wait(), TIMEOUT)
        writer.close()
        await asyncio.wait_for(ended.wait(), TIMEOUT)
    assert finished == [True]  # the first flow ran to its end; the second was cancelled
