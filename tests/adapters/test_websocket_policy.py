"""The WebSocket handshake under the HTTP policy: origins, API keys (header or subprotocol), ids."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import InvalidStatus

from llmbrick import ApiKeyAuth, ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_http import HttpSettings
from llmbrick_websocket import WebSocketServer
from llmbrick_websocket.codec import bearer_subprotocols
from tests.adapters.websocket_support import chat, collect, raw, recv, registry, send, served
from tests.support import bound_socket, quiescent


async def test_foreign_origins_are_refused_and_others_allowed() -> None:
    http = HttpSettings(cors_origins=("https://app.example.com",))
    server = WebSocketServer(registry(), http=http)
    async with served(server, settings=http) as url:
        host = url.removeprefix("ws://").removesuffix("/ws")
        with pytest.raises(InvalidStatus) as refused:
            async with raw(url, origin="https://evil.test"):
                pass
        assert refused.value.response.status_code == 403
        assert b"origin" in refused.value.response.body
        for origin in [None, f"http://{host}", "https://app.example.com"]:
            async with raw(url, origin=origin) as ws:  # type: ignore[arg-type]
                await send(ws, {"type": "start", "id": "1", "request": chat("hi")})
                assert (await collect(ws, "1"))["1"][-1]["type"] == "done"


async def test_keys_in_the_header_or_a_subprotocol() -> None:
    runtime = FlowRuntime(registry(), authenticator=ApiKeyAuth(["sekret name=web"]))
    async with served(WebSocketServer(runtime)) as url:
        for headers in [{}, {"authorization": "Bearer nope"}]:
            with pytest.raises(InvalidStatus) as refused:
                async with raw(url, additional_headers=headers):
                    pass
            response = refused.value.response
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert b"sekret" not in response.body
        async with raw(url, additional_headers={"authorization": "Bearer sekret"}) as ws:
            await send(ws, {"type": "start", "id": "a", "request": chat("one")})
            assert (await collect(ws, "a"))["a"][-1]["type"] == "done"
        # A browser cannot set headers: it offers the key as a subprotocol.
        async with raw(url, subprotocols=bearer_subprotocols("sekret")) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "llmbrick"
            await send(ws, {"type": "start", "id": "b", "request": chat("two")})
            assert (await collect(ws, "b"))["b"][-1]["type"] == "done"
        with pytest.raises(InvalidStatus):
            async with raw(url, subprotocols=bearer_subprotocols("wrong")):  # type: ignore[arg-type]
                pass


async def test_the_start_is_answered_with_the_stream_id_and_the_request_id_is_echoed() -> None:
    async with served(WebSocketServer(registry())) as url:
        async with raw(url, additional_headers={"x-request-id": "ws-req-1"}) as ws:
            assert ws.response is not None
            assert ws.response.headers["x-request-id"] == "ws-req-1"
            await send(ws, {"type": "start", "id": "7", "request": chat("hi")})
            started = await recv(ws, started=True)
            assert started["type"] == "started" and started["id"] == "7"
            assert len(started["streamId"]) == 16


async def test_sixteen_streams_of_64_kib_events_stay_within_the_connections_byte_bound() -> None:
    produced = [0]
    flows = FlowRegistry()

    @flows.flow("big")
    async def big(request: ChatRequest) -> AsyncIterator[Event]:
        for _ in range(100):
            produced[0] += 1
            yield {"type": "text", "text": "x" * (64 << 10)}

    bound = 256 << 10
    server = WebSocketServer(flows, max_buffer_bytes=bound, ping_interval=None)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    client.setblocking(False)
    async with served(server, sock=bound_socket(send_buffer=64 << 10)) as url:
        host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
        await asyncio.get_running_loop().sock_connect(client, (host, int(port)))
        async with raw(url, sock=client, max_queue=1, max_size=None) as ws:
            for n in range(16):
                await send(ws, {"type": "start", "id": str(n), "request": chat("x", flow="big")})
            held = await quiescent(lambda: produced[0])
            # The bound, one event in flight per stream, and the socket buffers.
            limit = bound + 16 * (64 << 10) + (1 << 20)
            assert held * (64 << 10) <= limit, f"{held} events of 64 KiB held"
            events = await collect(ws, *(str(n) for n in range(16)))
    assert all(len(stream) == 101 for stream in events.values())
