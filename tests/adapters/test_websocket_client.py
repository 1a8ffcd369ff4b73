"""The Python WebSocket client against a real server (uvicorn on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio

import pytest

from llmbrick import ChatRequest, Event, FlowRuntime
from llmbrick_websocket import ClientStream, WebSocketServer, connect
from tests.adapters.websocket_support import Hold, PingPong, chat, registry, run_events, served
from tests.support import TIMEOUT


async def consume(stream: ClientStream) -> list[Event]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


async def test_stream_yields_the_runtime_events_and_stops_after_the_terminal_one() -> None:
    runtime = FlowRuntime(registry())
    expected = await run_events(runtime, chat("hello over websocket"))
    async with served(WebSocketServer(runtime)) as url, connect(url) as ws:
        stream = ws.stream("default", chat("hello over websocket"))
        assert await consume(stream) == expected
        assert await consume(stream) == []  # a finished stream stays finished


async def test_invoke_matches_flow_runtime_invoke() -> None:
    runtime = FlowRuntime(registry())
    expected = await runtime.invoke(None, chat("join these words"))
    async with served(WebSocketServer(runtime)) as url, connect(url) as ws:
        result = await ws.invoke(None, chat("join these words"))
        typed = await ws.invoke("default", ChatRequest.model_validate(chat("join these words")))
        missing = await ws.invoke("missing", chat("x"))
    assert result == expected == typed
    assert result["text"] == "join these words" and result["error"] is None
    assert missing["error"] is not None and missing["error"]["code"] == "NOT_FOUND"
    assert missing["events"] == [
        {"type": "error", "error": missing["error"], "id": "1", "progress": "ERROR"}
    ]


async def test_concurrent_streams_share_one_connection() -> None:
    pingpong = PingPong(rounds=4)
    async with served(WebSocketServer(registry(pingpong=pingpong))) as url, connect(url) as ws:
        a, b = await asyncio.gather(
            consume(ws.stream("a", chat("go"))), consume(ws.stream("b", chat("go")))
        )
        # Each waits on the other's events, so both ran at once on the one socket.
        assert [e.get("text") for e in a] == ["a0", "a1", "a2", "a3", None]
        assert [e.get("text") for e in b] == ["b0", "b1", "b2", "b3", None]


async def test_cancel_ends_the_stream_with_its_cancelled_event() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, connect(url) as ws:
        stream = await ws.start("hold", chat("c"))
        other = await ws.start("hold", chat("o"))
        assert (await anext(stream))["text"] == "c ready"
        await stream.cancel()
        rest = await consume(stream)
        assert [e["type"] for e in rest] == ["error"]
        assert rest[0]["error"]["code"] == "CANCELLED" and rest[0]["id"] == "2"
        assert hold.closed == ["c"]
        hold.release.set()
        assert [e.get("text") for e in await consume(other)] == ["o ready", "o released", None]


async def test_cancel_by_id_on_the_client() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, connect(url) as ws:
        stream = await ws.start("hold", chat("k"), id="mine")
        assert stream.id == "mine"
        assert (await anext(stream))["text"] == "k ready"
        await ws.cancel("mine")
        assert (await anext(stream))["error"]["code"] == "CANCELLED"


async def test_leaving_a_stream_early_cancels_it_on_the_server() -> None:
    hold = Hold()
    runtime = FlowRuntime(registry(hold))
    async with served(WebSocketServer(runtime)) as url, connect(url) as ws:
        async with ws.stream("hold", chat("early")) as stream:
            async for event in stream:
                assert event["text"] == "early ready"
                break
        await hold.until(lambda: hold.closed == ["early"])
        # The connection goes on serving.
        assert (await ws.invoke(None, chat("after")))["text"] == "after"
    assert runtime.active_streams == 0


async def test_closing_the_client_cancels_its_streams_and_ends_them_with_cancelled() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url:
        async with connect(url) as ws:
            stream = await ws.start("hold", chat("z"))
            assert (await anext(stream))["text"] == "z ready"
        assert ws.closed and ws.close_code == 1000
        await hold.until(lambda: hold.closed == ["z"])
        # The stream ends with one terminal event, as every stream does.
        (last,) = await consume(stream)
        assert last["error"]["code"] == "CANCELLED" and last["id"] == "2"
        with pytest.raises(RuntimeError, match="closed"):
            await ws.start(None, chat("too late"))


async def test_a_server_close_ends_open_streams_with_the_close_code() -> None:
    hold = Hold()
    server = WebSocketServer(registry(hold), max_message_size=2048)
    async with served(server) as url, connect(url) as ws:
        stream = await ws.start("hold", chat("s"))
        assert (await anext(stream))["text"] == "s ready"
        # The server closes with 1009 for the frame too big: its report, so each stream
        # on the socket ends with a terminal event, whether it had events or not.
        (big,) = await consume(ws.stream(None, chat("x" * 4096)))
        assert big["id"] == "1" and big["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert big["error"]["details"]["closeCode"] == 1009
        (rest,) = await consume(stream)
        assert rest["id"] == "2" and rest["error"]["code"] == "RESOURCE_EXHAUSTED"
        # The next stream opens a new connection.
        assert (await ws.invoke(None, chat("again")))["text"] == "again"
    assert hold.closed == ["s"]


async def test_stream_ids_are_checked_before_sending() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, connect(url) as ws:
        with pytest.raises(ValueError, match="1 to 128"):
            ws.stream(None, chat("x"), id="")
        first = await ws.start("hold", chat("1"), id="dup")
        with pytest.raises(ValueError, match="already running"):
            await ws.start("hold", chat("2"), id="dup")
        await first.aclose()
        assert ws.problems == []
