"""The HTTP port under abuse and from browsers: head limits, slow clients, hosts, origins, keys."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llmbrick import ApiKeyAuth, CallerLimits, ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_http import HttpSettings
from llmbrick_sse import SSEServer
from tests.support import TIMEOUT, serve_asgi

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}


async def texts(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}


def server(**options: Any) -> SSEServer:
    registry = FlowRegistry()
    registry.register("default", texts)
    runtime_options = {
        k: options.pop(k) for k in ("authenticator", "caller_limits") if k in options
    }
    return SSEServer(FlowRuntime(registry, **runtime_options), **options)


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.split(":")
    return await asyncio.open_connection(host, int(port))


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """The status and body of the one response on a connection, and whether it then closed."""
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # to EOF: the server closes
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body, True


async def test_a_request_head_over_the_limit_gets_431_and_a_closed_connection() -> None:
    settings = HttpSettings(max_header_bytes=16 << 10)
    async with serve_asgi(server(http=settings).app, settings) as address:
        reader, writer = await connect(address)
        writer.write(b"POST /chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (1 << 20))
        status, body, closed = await answer(reader)
        writer.close()
        assert (status, closed) == (431, True)
        assert b"larger than 16384 bytes" in body
        # The server goes on.
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            assert (await client.post("/chat/completions", json=HELLO)).status_code == 200


async def test_413_answers_before_the_body_and_closes() -> None:
    async with serve_asgi(server(max_body_size=1000).app) as address:
        for framing in (b"content-length: 10000000\r\n", b"transfer-encoding: chunked\r\n"):
            reader, writer = await connect(address)
            writer.write(
                b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + framing
                + b"\r\n"
            )
            chunk = b"x" * 2000
            if framing.startswith(b"transfer"):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                writer.write(chunk)
            status, body, closed = await answer(reader)
            writer.close()
            assert (status, closed) == (413, True)
            assert b"1000-byte limit" in body


async def test_slow_heads_are_cut_off_while_normal_requests_are_served() -> None:
    settings = HttpSettings(header_timeout=0.5)
    async with serve_asgi(server(http=settings).app, settings) as address:
        slow = [await connect(address) for _ in range(50)]
        for _, writer in slow[:25]:
            writer.write(b"POST /chat/completions HTTP/1.1\r\nhost: x\r\n")  # and then nothing
        # (the other 25 never send a byte)
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            for _ in range(5):
                assert (await client.post("/chat/completions", json=HELLO)).status_code == 200
        for reader, writer in slow:
            status, body, closed = await answer(reader)
            writer.close()
            assert (status, closed) == (408, True)
            assert b"no complete request head within 0.5 s" in body


async def test_connections_over_the_cap_get_503_and_are_closed() -> None:
    settings = HttpSettings(max_connections=3)
    async with serve_asgi(server(http=settings).app, settings) as address:
        held = [await connect(address) for _ in range(3)]
        # A request on each held connection shows the server counted it before the next arrives.
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).startswith(
                b"HTTP/1.1 200"
            )
        reader, writer = await connect(address)
        status, _, closed = await answer(reader)
        writer.close()
        assert (status, closed) == (503, True)
        for _, held_writer in held:
            held_writer.close()


async def test_only_allowed_hosts_are_served() -> None:
    settings = HttpSettings(allowed_hosts=("localhost", "*.example.com"))
    async with serve_asgi(server(http=settings).app, settings) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            for host, status in [
                ("localhost:9999", 200),
                ("api.example.com", 200),
                ("evil.test", 400),
                ("example.com.evil.test", 400),
            ]:
                response = await client.post(
                    "/chat/completions", json=HELLO, headers={"host": host}
                )
                assert response.status_code == status, host
            refused = await client.get("/healthz", headers={"host": "rebound.attacker.test"})
            assert refused.status_code == 400
            assert "not served here" in refused.json()["error"]["message"]
            # Before any routing: a path with no route says nothing to another host either.
            unrouted = await client.get("/no/such/path", headers={"host": "evil.test"})
            assert unrouted.status_code == 400
            routed = await client.get("/no/such/path", headers={"host": "localhost"})
            assert routed.status_code == 404


async def test_cross_site_simple_requests_are_refused() -> None:
    async with serve_asgi(server().app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            origin = {"origin": "https://evil.test"}
            for content_type in ["text/plain", None]:
                headers = dict(origin)
                if content_type:
                    headers["content-type"] = content_type
                response = await client.post(
                    "/chat/completions", content=b'{"messages":[]}', headers=headers
                )
                assert response.status_code == 415, content_type
            # Without an Origin (curl, SDKs) a missing content type still reads as JSON.
            response = await client.post(
                "/chat/completions", content=b'{"messages":[{"role":"user","content":"x"}]}'
            )
            assert response.status_code == 200


async def test_cors_preflight_for_allowed_and_refused_origins() -> None:
    settings = HttpSettings(cors_origins=("https://app.example.com",))
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, last-event-id",
    }
    async with serve_asgi(server(http=settings).app, settings) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            allowed = await client.options(
                "/chat/completions", headers={"origin": "https://app.example.com", **preflight}
            )
            assert allowed.status_code == 204
            assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
            allow_headers = allowed.headers["access-control-allow-headers"].lower()
            for name in ("authorization", "content-type", "last-event-id"):
                assert name in allow_headers
            refused = await client.options(
                "/chat/completions", headers={"origin": "https://evil.test", **preflight}
            )
            assert refused.status_code >= 400
            assert "access-control-allow-origin" not in refused.headers
            # The real request from the allowed origin can read the ids it needs.
            response = await client.post(
                "/chat/completions", json=HELLO, headers={"origin": "https://app.example.com"}
            )
            assert response.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


async def test_keys_limits_and_ids_on_the_sse_endpoint() -> None:
    app = server(
        authenticator=ApiKeyAuth(["good-key name=alice"]),
        caller_limits=CallerLimits(rate=1.0),
    ).app
    async with serve_asgi(app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            for headers in [{}, {"authorization": "Bearer wrong"}]:
                response = await client.post("/chat/completions", json=HELLO, headers=headers)
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["error"]["code"] == "UNAUTHENTICATED"
                assert "good-key" not in response.text
            assert (await client.get("/flows")).status_code == 401
            assert (await client.get("/healthz")).status_code == 200  # health stays open
            key = {"authorization": "Bearer good-key", "x-request-id": "req-42"}
            response = await client.post("/chat/completions", json=HELLO, headers=key)
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "req-42"
            assert len(response.headers["x-llmbrick-stream-id"]) == 16
            # One start per second: the second at once is over the caller's rate.
            response = await client.post("/chat/completions", json=HELLO, headers=key)
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["details"]["limit"] == "caller"
            assert (await client.get("/flows", headers=key)).status_code == 200
            generated = await client.get("/healthz")
            assert len(generated.headers["x-request-id"]) == 16


@pytest.mark.parametrize("bad", [b"{", b'{"messages": [}'])
async def test_malformed_json_says_where_without_the_parsers_text(bad: bytes) -> None:
    async with serve_asgi(server().app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            response = await client.post(
                "/chat/completions", content=bad, headers={"content-type": "application/json"}
            )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("malformed JSON body (line 1, column ")
    assert "unexpected" not in message.lower() and "expecting" not in message.lower()


async def test_an_unknown_flow_name_is_not_echoed_in_full() -> None:
    async with serve_asgi(server().app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client:
            response = await client.post("/chat/completions", json={**HELLO, "flow": "x" * 100_000})
    assert response.status_code == 404
    assert len(response.content) < 1000


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        HttpSettings(cors_origins=("app.example.com",))
    with pytest.raises(ValueError, match="allowed host"):
        HttpSettings(allowed_hosts=("a*.example.com",))
    with pytest.raises(ValueError, match="max_connections"):
        HttpSettings(max_connections=0)
    assert socket  # imported for raw clients elsewhere in the suite
