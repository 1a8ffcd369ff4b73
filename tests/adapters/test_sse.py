"""The SSE adapter on a real uvicorn socket: wire format, every status, keepalive, disconnect."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime, Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_sse import SSEServer
from llmbrick_sse.watch import next_ping
from tests.support import TIMEOUT, bound_socket, parse_sse, quiescent, serve_asgi, sse_events

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello world"}]}


def make_server(**options: Any) -> SSEServer:
    server = SSEServer(Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM()), **options)

    @server.flow("crash")
    async def crash(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "partial"}
        raise RuntimeError("secret")

    return server


@pytest.fixture
async def address() -> AsyncIterator[str]:
    async with serve_asgi(make_server().app) as address:
        yield address


@pytest.fixture
async def client(address: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
        yield client


async def test_streams_one_frame_per_event_with_the_documented_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.text == (
        "id: 1\nevent: message\n"
        'data: {"type":"text","text":"hello ","model":"echo","id":"1","progress":"IN_PROGRESS"}\n\n'
        "id: 2\nevent: message\n"
        'data: {"type":"text","text":"world","model":"echo","id":"2","progress":"IN_PROGRESS"}\n\n'
        "id: 3\nevent: message\n"
        'data: {"type":"done","id":"3","progress":"DONE"}\n\n'
    )


async def test_newlines_in_text_stay_inside_one_data_line(address: str) -> None:
    events = await sse_events(address, {"messages": [{"role": "user", "content": "a\nb"}]})
    assert "".join(e.get("text", "") for e in events) == "a\nb"


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "TEXT/EVENT-STREAM", "application/json, text/event-stream;q=0.9", "text/*"],
)
async def test_accepted_accept_headers(client: httpx.AsyncClient, accept: str | None) -> None:
    headers = {} if accept is None else {"accept": accept}
    response = await client.post("/chat/completions", json=HELLO, headers=headers)
    assert response.status_code == 200
    assert parse_sse(response.text)[-1][2]["type"] == "done"


async def test_an_accept_header_excluding_event_stream_gets_406(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", json=HELLO, headers={"accept": "application/json"}
    )
    assert response.status_code == 406
    assert "text/event-stream" in response.json()["error"]["message"]


async def test_non_streaming_returns_one_json_document(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", json={**HELLO, "stream": False}, headers={"accept": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["text"] == "hello world"
    assert body["error"] is None
    assert [e["id"] for e in body["events"]] == ["1", "2", "3"]


async def test_non_streaming_status_follows_the_terminal_event(client: httpx.AsyncClient) -> None:
    payload = {"messages": [{"role": "user", "content": "a bomb"}], "stream": False}
    response = await client.post("/chat/completions", json=payload)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "PERMISSION_DENIED"
    response = await client.post(
        "/chat/completions", json={**payload, "flow": "crash"}, headers={"accept": "text/html"}
    )
    assert response.status_code == 406


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("malformed JSON body")


async def test_a_body_that_is_not_an_object_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=[1, 2])
    assert response.status_code == 422
    assert "JSON object" in response.json()["error"]["message"]


async def test_schema_violations_are_422_with_field_paths(client: httpx.AsyncClient) -> None:
    payload = {"messages": [{"role": "robot", "content": "x"}], "temperature": 9, "bogus": 1}
    response = await client.post("/chat/completions", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert {d["loc"] for d in error["details"]} == {"messages.0.role", "temperature", "bogus"}


async def test_unknown_flow_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json={**HELLO, "flow": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "no flow named 'nope'; known flows: 'default', 'crash'"
    )


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


async def test_a_missing_content_type_is_read_as_json(client: httpx.AsyncClient) -> None:
    request = client.build_request("POST", "/chat/completions", content=b'{"messages": []}')
    assert "content-type" not in request.headers
    response = await client.send(request)
    assert response.status_code == 422


async def test_bodies_over_the_limit_are_413() -> None:
    server = make_server(max_body_size=100)
    big = {"messages": [{"role": "user", "content": "x" * 200}]}
    async with serve_asgi(server.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            response = await client.post("/chat/completions", json=big)
            assert response.status_code == 413
            assert "100-byte limit" in response.json()["error"]["message"]

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b" " * 40
                yield b"{}"

            # Without a Content-Length the limit still holds while reading.
            response = await client.post(
                "/chat/completions", content=chunks(), headers={"content-type": "application/json"}
            )
            assert response.status_code == 413


async def test_get_on_the_endpoint_is_405_and_unknown_paths_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_too_many_streams_is_503_with_retry_after() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def hold(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "holding"}
        started.set()
        await release.wait()

    server = SSEServer(FlowRuntime(registry, max_streams=1))
    async with serve_asgi(server.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            first = asyncio.create_task(client.post("/chat/completions", json=HELLO))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            response = await client.post("/chat/completions", json=HELLO)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
            release.set()
            assert (await first).status_code == 200


async def test_an_error_mid_stream_is_one_error_frame_then_the_end(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/chat/completions", json={**HELLO, "flow": "crash"})
    assert response.status_code == 200
    frames = parse_sse(response.text)
    assert [(name, ident) for name, ident, _ in frames] == [("message", "1"), ("error", "2")]
    error = frames[-1][2]["error"]
    assert error["code"] == "INTERNAL"
    assert "secret" not in error["message"]


async def test_a_guard_rejection_is_an_error_frame(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat/completions", json={"messages": [{"role": "user", "content": "bomb"}]}
    )
    [(name, _, data)] = parse_sse(response.text)
    assert name == "error"
    assert data["error"]["code"] == "PERMISSION_DENIED"


async def test_keepalive_pings_while_the_flow_is_silent() -> None:
    pinged = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def quiet(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "a"}
        await pinged.wait()  # a model thinking; pings must fill the silence
        yield {"type": "text", "text": "b"}

    server = SSEServer(registry, ping_interval=0.05)
    body = ""
    async with serve_asgi(server.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            async with client.stream("POST", "/chat/completions", json=HELLO) as response:
                async for text in response.aiter_text():
                    body += text
                    if ": ping\n\n" in body:
                        pinged.set()
    frames = parse_sse(body)
    names = [name for name, _, _ in frames]
    assert names[0] == "message" and names[-2:] == ["message", "message"]
    assert frames[1] == (":", "", "ping")


@pytest.mark.parametrize(
    ("last_write", "now", "expected"),
    [
        (10.0, 10.0, (False, 15.0)),  # just wrote: check again a whole interval later
        (10.0, 24.0, (False, 1.0)),  # one second short of the interval: check then
        (10.0, 25.0, (True, 15.0)),  # an interval of silence: ping now
        (10.0, 90.0, (True, 15.0)),
    ],
)
def test_a_ping_is_due_one_interval_after_the_last_write(
    last_write: float, now: float, expected: tuple[bool, float]
) -> None:
    assert next_ping(last_write, now, 15.0) == expected


async def test_client_disconnect_cancels_the_flow_promptly() -> None:
    streaming = asyncio.Event()
    finished = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def endless(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "first"}
            streaming.set()
            await asyncio.Event().wait()
        finally:
            finished.set()
        yield {"type": "text", "text": "never"}

    runtime = FlowRuntime(registry)
    async with serve_asgi(SSEServer(runtime).app) as address:
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"messages": [{"role": "user", "content": "x"}]}'
        writer.write(
            b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"data: "), TIMEOUT)
        await asyncio.wait_for(streaming.wait(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        # Nothing else would ever end the flow: its finally running is the disconnect seen.
        await asyncio.wait_for(finished.wait(), TIMEOUT)
        assert runtime.active_streams == 0


async def test_one_failing_stream_does_not_disturb_others(address: str) -> None:
    results = await asyncio.gather(
        sse_events(address, HELLO),
        sse_events(address, {**HELLO, "flow": "crash"}),
        sse_events(address, HELLO),
    )
    assert [r[-1]["type"] for r in results] == ["done", "error", "done"]


async def test_flows_and_health(client: httpx.AsyncClient) -> None:
    flows = (await client.get("/flows")).json()["flows"]
    assert [f["name"] for f in flows] == ["default", "crash"]
    assert "messages" in flows[0]["requestSchema"]["properties"]
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


async def test_health_reports_draining() -> None:
    server = make_server()
    server.runtime.shutdown()
    async with serve_asgi(server.app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            assert (await client.get("/healthz")).status_code == 503
            response = await client.post("/chat/completions", json=HELLO)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "UNAVAILABLE"


async def test_prefix_and_path_are_configurable() -> None:
    server = make_server(prefix="/api", path="/v1/chat")
    async with serve_asgi(server.app) as address:
        events = await sse_events(address, HELLO, path="/api/v1/chat")
        assert events[-1]["type"] == "done"
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            assert (await client.get("/api/flows")).status_code == 200
            assert (await client.post("/chat/completions", json=HELLO)).status_code == 404


async def test_upstream_style_snake_case_requests_are_accepted(address: str) -> None:
    payload = {
        **HELLO,
        "model": "m",
        "session_id": "s",
        "client_id": "c",
        "max_tokens": 5,
        "temperature": 0.5,
        "source_language": "en",
        "tool_choice": "auto",
    }
    events = await sse_events(address, payload)
    assert events[0]["model"] == "m"


async def test_the_python_client_streams_invokes_and_lists(address: str) -> None:
    from llmbrick_sse import SSEClient

    async with SSEClient(f"http://{address}") as client:
        events = [e async for e in client.stream("default", HELLO)]
        assert events == await sse_events(address, HELLO)
        result = await client.invoke("default", ChatRequest.model_validate(HELLO))
        assert result["text"] == "hello world" and result["error"] is None
        missing = await client.invoke("nope", HELLO)
        assert missing["error"] is not None and missing["error"]["code"] == "NOT_FOUND"
        assert missing["events"][0]["id"] == "1"
        invalid = await client.invoke("default", {"messages": []})
        assert invalid["error"] is not None
        assert invalid["error"]["details"][0]["loc"] == "messages"
        assert [f["name"] for f in await client.list_flows()] == ["default", "crash"]


def counting_sends(app: Any, counts: list[int]) -> Any:
    """Wrap an ASGI app to count the response-body messages it sends."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def counted(message: Any) -> None:
            if message["type"] == "http.response.body":
                counts.append(len(message.get("body", b"")))
            await send(message)

        await app(scope, receive, counted)

    return wrapped


async def open_stream(address: str, payload: bytes) -> tuple[Any, Any]:
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    writer.write(
        b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    await writer.drain()
    return reader, writer


async def raw_client(address: str, request: bytes, receive_buffer: int = 32 << 10) -> socket.socket:
    """A client socket, not watched by the event loop, that reads only when told to."""
    host, port = address.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, request)
    return sock


async def read_all(sock: socket.socket, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    body = bytearray()
    while not body.endswith(until):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT)
        assert chunk, "the server closed the connection early"
        body += chunk
    return bytes(body)


def post(payload: bytes) -> bytes:
    return (
        b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
    )


HELLO_BYTES = b'{"messages":[{"role":"user","content":"x"}]}'


async def test_a_client_that_stops_reading_holds_back_the_flow_within_the_byte_bound() -> None:
    """With 64 KiB events, the flow waits once the bound (plus socket buffers) is reached."""
    produced = [0]
    registry = FlowRegistry()

    @registry.flow("default")
    async def big(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(400):  # 25 MiB if nothing held it back
            produced[0] = n + 1
            yield {"type": "text", "text": f"{n:06d}" + "x" * (64 << 10)}

    bound = 256 << 10
    server = SSEServer(registry, max_buffer_bytes=bound)
    async with serve_asgi(server.app, sock=bound_socket(send_buffer=32 << 10)) as address:
        sock = await raw_client(address, post(HELLO_BYTES))
        try:
            held = await quiescent(lambda: produced[0])
            # The bound, one event in flight, and what the kernel and transport buffers took.
            assert held * (64 << 10) <= bound + (1 << 20), f"{held} events of 64 KiB produced"
            frames = parse_sse(_dechunk(await read_all(sock, b"0\r\n\r\n")))
        finally:
            sock.close()
    texts = [data["text"][:6] for name, _, data in frames if name == "message" and "text" in data]
    assert texts == [f"{n:06d}" for n in range(400)]


async def test_a_slow_reader_gets_waiting_events_coalesced_in_order() -> None:
    total = 5_000
    produced = [0]
    registry = FlowRegistry()

    @registry.flow("default")
    async def burst(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(total):
            produced[0] = n + 1
            yield {"type": "text", "text": f"{n:06d}" + "x" * 1000}

    counts: list[int] = []
    app = counting_sends(SSEServer(registry).app, counts)
    async with serve_asgi(app, sock=bound_socket(send_buffer=32 << 10)) as address:
        sock = await raw_client(address, post(HELLO_BYTES))
        try:
            await quiescent(lambda: produced[0])  # the client is behind: events wait on the server
            body = await read_all(sock, b"0\r\n\r\n")
        finally:
            sock.close()
    frames = [f for f in parse_sse(_dechunk(body)) if f[0] != ":"]
    assert [int(ident) for _, ident, _ in frames] == list(range(1, total + 2))
    assert frames[-1][2]["type"] == "done"
    assert [int(data["text"][:6]) for _, _, data in frames[:-1]] == list(range(total))
    # What waited went out together: one write carried the whole backlog (~256 KiB).
    assert max(counts) > 100 * 1000, f"largest write {max(counts)} bytes"
    assert len(counts) < total


def _dechunk(raw: bytes) -> str:
    out = bytearray()
    at = raw.index(b"\r\n\r\n") + 4
    while True:
        end = raw.index(b"\r\n", at)
        size = int(raw[at:end], 16)
        if size == 0:
            return out.decode()
        out += raw[end + 2 : end + 2 + size]
        at = end + 4 + size


async def test_disconnect_while_reading_ahead_runs_the_flows_finally() -> None:
    blocked = asyncio.Event()
    finished = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def endless(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            n = 0
            while True:
                n += 1
                yield {"type": "text", "text": "y" * 2000}
                if n > 2000:
                    blocked.set()  # far more than the socket buffers hold: sends are waiting
                    await asyncio.sleep(0)
        finally:
            finished.set()

    runtime = FlowRuntime(registry)
    async with serve_asgi(SSEServer(runtime).app) as address:
        _, writer = await open_stream(address, b'{"messages":[{"role":"user","content":"x"}]}')
        await asyncio.wait_for(blocked.wait(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(finished.wait(), TIMEOUT)
        assert runtime.active_streams == 0


async def test_events_made_without_waiting_share_a_write() -> None:
    """A flow relaying an upstream that hands over 16 tokens per read: 16 events per write."""
    registry = FlowRegistry()

    @registry.flow("default")
    async def bursts(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(160):
            if n % 16 == 0:
                await asyncio.sleep(0)  # the next network read
            yield {"type": "text", "text": f"{n:03d}"}

    counts: list[int] = []
    async with serve_asgi(counting_sends(SSEServer(registry).app, counts)) as address:
        frames = [f for f in await sse_events(address, HELLO) if f["type"] == "text"]
    assert [frame["text"] for frame in frames] == [f"{n:03d}" for n in range(160)]
    assert len(counts) < 30, f"{len(counts)} writes for 160 events"


async def test_an_event_goes_out_before_the_flow_waits_for_the_next_one() -> None:
    """A flow that waits before every event (a model's tokens) never has one held back until
    the next: each turn of the flow waits for the client to have read the previous event,
    past the point where the endpoint stops stepping the flow and only probes it."""
    turns = [asyncio.Event() for _ in range(40)]
    registry = FlowRegistry()

    async def stepwise(request: ChatRequest) -> AsyncIterator[Event]:
        for n, turn in enumerate(turns):
            await turn.wait()
            yield {"type": "text", "text": f"t{n}"}

    registry.register("stepwise", stepwise)
    payload = {"flow": "stepwise", "messages": [{"role": "user", "content": "x"}]}
    async with (
        serve_asgi(SSEServer(FlowRuntime(registry)).app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client,
        client.stream("POST", "/chat/completions", json=payload) as response,
        asyncio.timeout(TIMEOUT),
    ):
        lines = response.aiter_lines()
        for n, turn in enumerate(turns):
            turn.set()
            async for line in lines:
                if line.startswith("data:") and f'"t{n}"' in line:
                    break
            else:
                raise AssertionError(f"the stream ended before t{n}")
