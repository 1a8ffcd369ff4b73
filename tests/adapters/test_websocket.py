"""The WebSocket adapter's protocol over real sockets (uvicorn on 127.0.0.1:0, raw websockets)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from websockets.exceptions import ConnectionClosed

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, RequestContext
from llmbrick.stream import FlowStream
from llmbrick_websocket import WebSocketServer, create_router
from llmbrick_websocket.codec import encode_event
from tests.adapters.websocket_support import (
    Hold,
    PingPong,
    chat,
    collect,
    raw,
    recv,
    registry,
    run_events,
    send,
    served,
)
from tests.support import TIMEOUT, bound_socket, quiescent, serve_asgi


async def closed_with(ws: Any) -> tuple[int | None, str | None]:
    """Read until the server closes; returns (close code, reason) as received."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason


async def test_stream_carries_exactly_the_runtime_events() -> None:
    runtime = FlowRuntime(registry())
    expected = await run_events(runtime, chat("one two three"))
    async with served(WebSocketServer(runtime)) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "s-1", "request": chat("one two three")})
        events = await collect(ws, "s-1")
    assert events["s-1"] == expected
    assert [e["type"] for e in expected] == ["text", "text", "text", "done"]


async def test_request_names_the_flow_and_defaults_to_default() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "x", "request": chat("hi")})
        await send(ws, {"type": "start", "id": "y", "request": chat("h", flow="hold")})
        hold.release.set()
        events = await collect(ws, "x", "y")
    assert events["x"][0]["text"] == "hi"
    assert [e.get("text") for e in events["y"]] == ["h ready", "h released", None]


async def test_two_streams_interleave_on_one_socket_and_both_complete() -> None:
    pingpong = PingPong(rounds=3)
    order: list[str] = []
    async with served(WebSocketServer(registry(pingpong=pingpong))) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "A", "request": chat("go", flow="a")})
        await send(ws, {"type": "start", "id": "B", "request": chat("go", flow="b")})
        done: set[str] = set()
        while len(done) < 2:
            frame = await recv(ws)
            order.append(f"{frame['id']}:{frame['event'].get('text', frame['event']['type'])}")
            if frame["event"]["type"] == "done":
                done.add(frame["id"])
    texts = [item for item in order if not item.endswith(":done")]
    assert texts == ["A:a0", "B:b0", "A:a1", "B:b1", "A:a2", "B:b2"]
    assert order.index("A:done") > order.index("A:a2")
    assert order[-1] == "B:done"


async def test_cancel_ends_one_stream_with_cancelled_and_leaves_the_others() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, raw(url) as ws:
        for tag in ("p", "q"):
            await send(ws, {"type": "start", "id": tag, "request": chat(tag, flow="hold")})
        first = [await recv(ws), await recv(ws)]
        assert sorted(f["event"]["text"] for f in first) == ["p ready", "q ready"]
        await send(ws, {"type": "cancel", "id": "p"})
        frame = await recv(ws)
        assert frame == {
            "id": "p",
            "event": {
                "type": "error",
                "error": {"code": "CANCELLED", "message": "the stream was cancelled by the client"},
                "id": "2",
                "progress": "ERROR",
            },
        }
        assert hold.closed == ["p"]  # the flow's finally ran before the answer
        hold.release.set()
        rest = await collect(ws, "q")
        assert [e["type"] for e in rest["q"]] == ["text", "done"]
        # The socket stays open for more streams.
        await send(ws, {"type": "start", "id": "p", "request": chat("again")})
        assert (await collect(ws, "p"))["p"][-1]["type"] == "done"


async def test_cancel_before_the_first_event_answers_with_event_one() -> None:
    started = asyncio.Event()
    closed = asyncio.Event()
    flows = FlowRegistry()

    @flows.flow("slow")
    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        started.set()
        try:
            await asyncio.Event().wait()
            yield {"type": "text", "text": "never"}
        finally:
            closed.set()

    async with served(WebSocketServer(flows)) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "s", "request": chat("x", flow="slow")})
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await send(ws, {"type": "cancel", "id": "s"})
        frame = await recv(ws)
    assert frame["event"]["error"]["code"] == "CANCELLED"
    assert frame["event"]["id"] == "1"
    assert closed.is_set()


async def test_cancel_in_the_same_batch_as_start_still_answers_and_frees_the_slot() -> None:
    hold = Hold()
    runtime = FlowRuntime(registry(hold))
    async with served(WebSocketServer(runtime)) as url, raw(url) as ws:
        # Both frames usually reach the server in one read: the cancel lands before
        # the stream's task has taken its first step.
        await send(ws, {"type": "start", "id": "s", "request": chat("s", flow="hold")})
        await send(ws, {"type": "cancel", "id": "s"})
        events = await collect(ws, "s")
        assert events["s"][-1]["error"]["code"] == "CANCELLED"
        assert [e["id"] for e in events["s"]] == [str(i) for i in range(1, len(events["s"]) + 1)]
        assert runtime.active_streams == 0


async def test_cancel_of_an_unknown_or_finished_stream_is_ignored() -> None:
    async with served(WebSocketServer(registry())) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "done-already", "request": chat("a")})
        await collect(ws, "done-already")
        await send(ws, {"type": "cancel", "id": "done-already"})
        await send(ws, {"type": "cancel", "id": "never-started"})
        await send(ws, {"type": "start", "id": "next", "request": chat("b")})
        frame = await recv(ws)  # no error frame came first
        assert frame["id"] == "next"


async def test_stream_id_can_be_reused_once_its_terminal_event_arrived() -> None:
    async with served(WebSocketServer(registry())) as url, raw(url) as ws:
        for text in ("first", "second"):
            await send(ws, {"type": "start", "id": "same", "request": chat(text)})
            events = (await collect(ws, "same"))["same"]
            assert events[0]["text"] == text


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_disconnect_cancels_every_stream_of_the_socket(how: str) -> None:
    hold = Hold()
    runtime = FlowRuntime(registry(hold))
    async with served(WebSocketServer(runtime)) as url:
        async with raw(url) as ws:
            for tag in ("u", "v"):
                await send(ws, {"type": "start", "id": tag, "request": chat(tag, flow="hold")})
            await hold.until(lambda: len(hold.started) == 2)
            if how == "abort":
                ws.transport.abort()
        await hold.until(lambda: len(hold.closed) == 2)
        assert sorted(hold.closed) == ["u", "v"]
        assert runtime.active_streams == 0


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (chat("x", flow="missing"), "NOT_FOUND"),
        ({"messages": []}, "INVALID_ARGUMENT"),
        ({"flow": 5, "messages": [{"role": "user", "content": "x"}]}, "INVALID_ARGUMENT"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "INVALID_ARGUMENT"),
    ],
)
async def test_a_stream_that_cannot_start_gets_one_terminal_error_event(
    payload: dict[str, Any], code: str
) -> None:
    runtime = FlowRuntime(registry())
    expected = await run_events(runtime, payload)
    async with served(WebSocketServer(runtime)) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "bad", "request": payload})
        events = await collect(ws, "bad")
        assert events["bad"] == expected
        assert events["bad"][0]["error"]["code"] == code
        assert events["bad"][0]["id"] == "1" and events["bad"][0]["progress"] == "ERROR"
        # The socket stays open.
        await send(ws, {"type": "start", "id": "good", "request": chat("fine")})
        assert (await collect(ws, "good"))["good"][-1]["type"] == "done"


async def test_streams_over_the_connection_cap_are_resource_exhausted() -> None:
    hold = Hold()
    server = WebSocketServer(registry(hold), max_streams=2)
    async with served(server) as url, raw(url) as ws:
        for tag in ("1", "2", "3"):
            await send(ws, {"type": "start", "id": tag, "request": chat(tag, flow="hold")})
        frames = [await recv(ws) for _ in range(3)]
        over = next(f for f in frames if f["id"] == "3")
        assert over["event"]["type"] == "error"
        assert over["event"]["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert over["event"]["error"]["details"] == {"maxStreams": 2}
        assert (over["event"]["id"], over["event"]["progress"]) == ("1", "ERROR")
        assert sorted(hold.started) == ["1", "2"]
        # When one ends, a new stream fits again.
        await send(ws, {"type": "cancel", "id": "1"})
        assert (await recv(ws))["event"]["error"]["code"] == "CANCELLED"
        await send(ws, {"type": "start", "id": "4", "request": chat("4", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "4 ready"


async def test_runtime_overload_is_the_same_resource_exhausted_event() -> None:
    hold = Hold()
    runtime = FlowRuntime(registry(hold), max_streams=1)
    async with served(WebSocketServer(runtime)) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "a", "request": chat("a", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "a ready"
        await send(ws, {"type": "start", "id": "b", "request": chat("b", flow="hold")})
        frame = await recv(ws)
    assert frame["id"] == "b"
    assert frame["event"]["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert frame["event"]["error"]["details"] == {"retryAfter": 1.0, "limit": "server"}


@pytest.mark.parametrize(
    ("frame", "words", "stream_id"),
    [
        ("{not json", "not valid JSON", None),
        ("[1, 2]", "must be a JSON object, got array", None),
        ('{"id": "a"}', 'no "type"', None),
        ('{"type": "stop", "id": "a"}', "unknown frame type 'stop'", None),
        ('{"type": "start", "request": {}}', '"id" must be a non-empty string', None),
        ('{"type": "cancel", "id": 7}', '"id" must be a non-empty string', None),
        ('{"type": "start", "id": "' + "i" * 129 + '", "request": {}}', "longer than 128", None),
        ('{"type": "start", "id": "r"}', '"request" must be a JSON object, got missing', "r"),
        ('{"type": "start", "id": "r", "request": "hi"}', "got a JSON string", "r"),
        (b"\x00\x01", "binary frames are not supported", None),
    ],
)
async def test_protocol_errors_name_the_problem_and_keep_the_socket(
    frame: str | bytes, words: str, stream_id: str | None
) -> None:
    async with served(WebSocketServer(registry())) as url, raw(url) as ws:
        await send(ws, frame)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["error"]["code"] == "INVALID_ARGUMENT"
        assert words in error["error"]["message"]
        assert error.get("id") == stream_id
        await send(ws, {"type": "start", "id": "ok", "request": chat("still open")})
        assert (await collect(ws, "ok"))["ok"][-1]["type"] == "done"


async def test_reusing_a_live_id_is_a_protocol_error_naming_it() -> None:
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "dup", "request": chat("d", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "d ready"
        await send(ws, {"type": "start", "id": "dup", "request": chat("e", flow="hold")})
        error = await recv(ws)
        assert error["id"] == "dup"
        assert "already running" in error["error"]["message"]
        hold.release.set()  # the first stream is untouched
        events = await collect(ws, "dup")
    assert [e.get("text") for e in events["dup"]] == ["d released", None]
    assert hold.started == ["d"]


async def test_repeated_protocol_abuse_closes_with_1008_and_cancels_streams() -> None:
    hold = Hold()
    async with (
        served(WebSocketServer(registry(hold), max_protocol_errors=3)) as url,
        raw(url) as ws,
    ):
        await send(ws, {"type": "start", "id": "h", "request": chat("h", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "h ready"
        for _ in range(3):
            await send(ws, "garbage")
        errors = [await recv(ws) for _ in range(3)]  # the last one is sent before the close
        assert all(e["type"] == "error" for e in errors)
        assert await closed_with(ws) == (1008, "too many protocol errors")
    assert hold.closed == ["h"]


async def test_frame_over_the_limit_closes_1009_under_the_servers_settings() -> None:
    server = WebSocketServer(registry(), max_message_size=1024)
    assert server.uvicorn_options()["ws_max_size"] == 1024
    async with served(server) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "a", "request": chat("x" * 900)})
        assert (await collect(ws, "a"))["a"][-1]["type"] == "done"
        await send(ws, {"type": "start", "id": "b", "request": chat("x" * 1100)})
        code, _ = await closed_with(ws)
    assert code == 1009


@pytest.mark.parametrize("frame", ["€" * 400, b"\x00" * 1025])
async def test_frame_over_the_limit_closes_1009_when_mounted_elsewhere(frame: str | bytes) -> None:
    # Mounted on another app, the protocol layer keeps its own (16 MiB) limit: the
    # handler's check must hold the line. 400 euro signs are 1200 bytes in UTF-8.
    app = Litestar(
        [create_router(FlowRuntime(registry()), max_message_size=1024)], logging_config=None
    )
    async with serve_asgi(app) as address, raw(f"ws://{address}/ws") as ws:
        await send(ws, frame)
        assert await closed_with(ws) == (1009, "message too big")


class _BrokenRuntime(FlowRuntime):
    def start(
        self,
        name: str | None,
        payload: object,
        *,
        transport: str = "python",
        context: RequestContext | None = None,
    ) -> FlowStream:
        if isinstance(payload, dict) and payload.get("flow") == "explode":
            raise RuntimeError("secret internal detail")
        return super().start(name, payload, transport=transport, context=context)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_adapter_crash_closes_1011_without_details() -> None:
    hold = Hold()
    runtime = _BrokenRuntime(registry(hold))
    # A handler on the logger itself: the app's startup may reconfigure the root logger.
    handler = _Records()
    logger = logging.getLogger("llmbrick.websocket")
    logger.addHandler(handler)
    try:
        async with served(WebSocketServer(runtime)) as url, raw(url) as ws:
            await send(ws, {"type": "start", "id": "h", "request": chat("h", flow="hold")})
            assert (await recv(ws))["event"]["text"] == "h ready"
            await send(ws, {"type": "start", "id": "x", "request": chat("x", flow="explode")})
            assert await closed_with(ws) == (1011, "internal error")
    finally:
        logger.removeHandler(handler)
    assert hold.closed == ["h"]
    assert runtime.active_streams == 0
    assert len(handler.records) == 1
    exc_info = handler.records[0].exc_info
    assert exc_info is not None and "secret internal detail" in str(exc_info[1])


async def test_an_event_json_cannot_carry_ends_that_stream_with_internal() -> None:
    flows = registry()
    finished = asyncio.Event()

    @flows.flow("huge")
    async def huge(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "fine"}
            # A lone surrogate: a str to Python, not encodable as UTF-8 JSON.
            yield {"type": "data", "data": {"s": "\ud800"}}
            yield {"type": "text", "text": "never sent"}
        finally:
            finished.set()

    async with served(WebSocketServer(flows)) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "h", "request": chat("x", flow="huge")})
        events = (await collect(ws, "h"))["h"]
        assert finished.is_set()
        await send(ws, {"type": "start", "id": "next", "request": chat("ok")})
        assert (await collect(ws, "next"))["next"][-1]["type"] == "done"
    assert [e["id"] for e in events] == ["1", "2"]
    assert events[1]["error"]["code"] == "INTERNAL"
    assert events[1]["progress"] == "ERROR"


async def test_keepalive_drops_a_peer_that_stops_answering_pings() -> None:
    hold = Hold()
    server = WebSocketServer(registry(hold), ping_interval=0.05, ping_timeout=0.05)
    async with served(server) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "k", "request": chat("k", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "k ready"
        ws.transport.pause_reading()  # pings now go unanswered
        await hold.until(lambda: hold.closed == ["k"])
        ws.transport.abort()


async def test_a_slow_reader_suspends_the_flow_instead_of_queueing_without_bound() -> None:
    total, size = 600, 16 * 1024
    produced = 0
    flows = FlowRegistry()

    @flows.flow("flood")
    async def flood(request: ChatRequest) -> AsyncIterator[Event]:
        nonlocal produced
        for _ in range(total):
            produced += 1
            yield {"type": "text", "text": "x" * size}

    server = WebSocketServer(flows, max_buffer_bytes=64 * 1024, ping_interval=None)
    # A fixed receive buffer keeps the kernel from autotuning it to tens of MiB.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.setblocking(False)
    # A small send buffer on the server's side too, so the kernel holds little of the backlog.
    async with served(server, sock=bound_socket(send_buffer=128 << 10)) as url:
        host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        async with raw(url, sock=sock, max_queue=1, max_size=None) as ws:
            # The client reads nothing: its library stops reading the socket after one frame.
            await send(ws, {"type": "start", "id": "f", "request": chat("x", flow="flood")})
            await quiescent(lambda: produced)
            # The send buffer plus the socket buffers (well under a MiB), far from all 9.6 MiB.
            assert 0 < produced * size < (64 << 10) + (1 << 20), produced
            received = 0
            while True:
                frame = await recv(ws)
                if frame["event"]["type"] == "done":
                    break
                received += 1
                assert frame["event"]["id"] == str(received)
    assert received == produced == total


async def test_compression_is_off_by_default_and_a_deliberate_setting() -> None:
    for compression, negotiated in ((False, []), (True, ["permessage-deflate"])):
        server = WebSocketServer(registry(), compression=compression)
        assert server.uvicorn_options()["ws_per_message_deflate"] is compression
        async with served(server) as url, raw(url, compression="deflate") as ws:
            names = [ext.name for ext in ws.protocol.extensions]
            await send(ws, {"type": "start", "id": "c", "request": chat("squeeze me")})
            assert (await collect(ws, "c"))["c"][-1]["type"] == "done"
        assert names == negotiated


async def test_router_mounts_under_a_prefix_and_path() -> None:
    app = Litestar(
        [create_router(FlowRuntime(registry()), prefix="/api", path="/stream")],
        logging_config=None,
    )
    async with serve_asgi(app) as address, raw(f"ws://{address}/api/stream") as ws:
        await send(ws, {"type": "start", "id": "1", "request": chat("mounted")})
        assert (await collect(ws, "1"))["1"][0]["text"] == "mounted"


async def test_server_flow_decorator_registers_on_its_runtime() -> None:
    server = WebSocketServer()

    @server.flow("shout", description="Upper-cases the message.")
    async def shout(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": request.messages[-1].content.upper()}

    assert server.runtime.registry.names() == ["shout"]
    async with served(server) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "1", "request": chat("hey", flow="shout")})
        assert (await collect(ws, "1"))["1"][0]["text"] == "HEY"


@pytest.mark.parametrize(
    "setting", ["max_streams", "max_message_size", "max_protocol_errors", "max_buffer_bytes"]
)
def test_limits_must_be_positive(setting: str) -> None:
    options: dict[str, Any] = {setting: 0}
    with pytest.raises(ValueError, match=setting):
        create_router(FlowRuntime(), **options)


async def test_a_crash_in_a_stream_task_closes_1011(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(stream_id: str, event: Event) -> str:
        if stream_id == "bug":
            raise RuntimeError("adapter bug with secret detail")
        return encode_event(stream_id, event)

    monkeypatch.setattr("llmbrick_websocket.connection.encode_event", encode)
    hold = Hold()
    async with served(WebSocketServer(registry(hold))) as url, raw(url) as ws:
        await send(ws, {"type": "start", "id": "h", "request": chat("h", flow="hold")})
        assert (await recv(ws))["event"]["text"] == "h ready"
        await send(ws, {"type": "start", "id": "bug", "request": chat("x")})
        assert await closed_with(ws) == (1011, "internal error")
    assert sorted(hold.closed) == ["h"]
