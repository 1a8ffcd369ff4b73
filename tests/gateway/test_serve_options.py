"""``llmbrick serve``'s production options, each through a real gateway process.

API keys and per-key limits on all three transports, CORS and allowed hosts, TLS
and mutual TLS with a throwaway CA, the stream store and grace, the HTTP port's
limits and routes, and IPv6. Every wait is for an answer, a line or a file.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.components import wait_for
from tests.gateway.cli_support import gateway
from tests.gateway.serve_support import (
    APP,
    certificates,
    chat,
    grpc_flows,
    grpc_stream,
    raw_http,
    websocket_stream,
)
from tests.support import TIMEOUT, parse_sse

KEYS = """\
# the chat key may run every flow but admin's
k-chat-123 name=chatter scopes=chat
k-admin-456 name=root scopes=admin,chat
"""


def address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def error_code(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["code"])


async def test_api_keys_on_every_transport(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(KEYS)
    async with gateway(APP, "--api-keys-file", str(keys)) as served:
        ws, grpc_address = served.urls["WebSocket"], served.grpc_address
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:

            async def sse(flow: str, key: str | None) -> httpx.Response:
                headers = {} if key is None else {"authorization": f"Bearer {key}"}
                return await client.post("/chat/completions", json=chat(flow), headers=headers)

            missing, wrong = await sse("pid", None), await sse("pid", "k-nope")
            right, scope = await sse("pid", "k-chat-123"), await sse("admin", "k-chat-123")
            admin = await sse("admin", "k-admin-456")
            flows = await client.get("/flows")
        assert (missing.status_code, error_code(missing)) == (401, "UNAUTHENTICATED")
        assert missing.headers["www-authenticate"] == 'Bearer realm="llmbrick"'
        assert (wrong.status_code, error_code(wrong)) == (401, "UNAUTHENTICATED")
        assert right.status_code == 200 and parse_sse(right.text)[-1][2]["type"] == "done"
        assert (scope.status_code, error_code(scope)) == (403, "PERMISSION_DENIED")
        assert "admin only" in admin.text
        assert flows.status_code == 401

        for key in (None, "k-nope"):
            with pytest.raises(InvalidStatus) as refused:
                await websocket_stream(ws, chat("pid"), key=key)
            assert refused.value.response.status_code == 401
        events = await websocket_stream(ws, chat("pid"), key="k-chat-123")
        assert events[-1]["type"] == "done"
        events = await websocket_stream(ws, chat("admin"), key="k-chat-123")
        assert events[-1]["error"]["code"] == "PERMISSION_DENIED"

        for key in (None, "k-nope"):
            assert (await grpc_stream(grpc_address, chat("pid"), key=key)).code == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        answer = await grpc_stream(grpc_address, chat("pid"), key="k-chat-123")
        assert answer.code == grpc.StatusCode.OK and answer.events[-1]["type"] == "done"
        answer = await grpc_stream(grpc_address, chat("admin"), key="k-chat-123")
        assert answer.code == grpc.StatusCode.PERMISSION_DENIED
        returncode, stderr = await served.stop()
    assert returncode == 0
    for secret in ("k-chat-123", "k-admin-456"):
        assert secret not in stderr and secret not in "\n".join(served.banner)


async def test_per_key_limits_from_keys_in_the_environment(tmp_path: Path) -> None:
    # One stream at once per key, and one new stream per 100 s (in bursts of 1).
    limits = ["--max-streams-per-key", "1", "--rate-per-key", "0.01"]
    env = {"LLMBRICK_API_KEYS": "k-sse-busy,k-sse-fast,k-grpc-busy,k-grpc-fast"}
    gate = tmp_path / "gate"
    async with gateway(APP, *limits, env=env) as served:
        grpc_address = served.grpc_address
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            auth = {"authorization": "Bearer k-sse-busy"}
            async with client.stream(
                "POST", "/chat/completions", json=chat("held", gate=gate), headers=auth
            ) as running:
                async for line in running.aiter_lines():
                    if line.startswith("data: "):
                        break  # the first event: the key runs its one stream
                busy = await client.post("/chat/completions", json=chat("pid"), headers=auth)
                gate.touch()
            auth = {"authorization": "Bearer k-sse-fast"}
            first = await client.post("/chat/completions", json=chat("pid"), headers=auth)
            fast = await client.post("/chat/completions", json=chat("pid"), headers=auth)
            nobody = await client.post("/chat/completions", json=chat("pid"))
        assert (busy.status_code, error_code(busy)) == (429, "RESOURCE_EXHAUSTED")
        assert busy.headers["retry-after"] == "1"
        assert first.status_code == 200
        assert (fast.status_code, error_code(fast)) == (429, "RESOURCE_EXHAUSTED")
        assert 90 <= int(fast.headers["retry-after"]) <= 100
        assert nobody.status_code == 401  # the keys came from LLMBRICK_API_KEYS

        gate.unlink()
        started, release = asyncio.Event(), asyncio.Event()
        running_call = asyncio.create_task(
            grpc_stream(
                grpc_address,
                chat("held", gate=gate),
                key="k-grpc-busy",
                until_first=started,
                release=release,
            )
        )
        await asyncio.wait_for(started.wait(), TIMEOUT)
        busy_call = await grpc_stream(grpc_address, chat("pid"), key="k-grpc-busy")
        gate.touch()
        release.set()
        assert (await asyncio.wait_for(running_call, TIMEOUT)).code == grpc.StatusCode.OK
        assert (await grpc_stream(grpc_address, chat("pid"), key="k-grpc-fast")).code == (
            grpc.StatusCode.OK
        )
        fast_call = await grpc_stream(grpc_address, chat("pid"), key="k-grpc-fast")
    assert busy_call.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert busy_call.trailers["grpc-retry-pushback-ms"] == "1000"
    assert fast_call.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 90_000 <= int(fast_call.trailers["grpc-retry-pushback-ms"]) <= 100_000


async def test_cors_origins_and_allowed_hosts() -> None:
    app_origin, evil_origin = "https://app.example.com", "https://evil.example"
    options = ["--cors-origin", app_origin, "--allowed-host", "api.example.com"]
    async with gateway(APP, *options) as served:
        port = address(served.http)[1]
        ws = served.urls["WebSocket"]
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:

            async def preflight(origin: str) -> httpx.Response:
                headers = {
                    "origin": origin,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type,authorization",
                }
                return await client.options("/chat/completions", headers=headers)

            allowed, refused = await preflight(app_origin), await preflight(evil_origin)
            cross = await client.post(
                "/chat/completions", json=chat("pid"), headers={"origin": app_origin}
            )
            hosts = {
                host: (await client.get("/healthz", headers={"host": host})).status_code
                for host in (f"localhost:{port}", "api.example.com", "evil.example", "[::1]")
            }
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == app_origin
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        assert cross.headers["access-control-allow-origin"] == app_origin
        assert "location" in cross.headers["access-control-expose-headers"].lower()
        # Bound to 127.0.0.1: loopback names, plus the one allowed; others are DNS rebinding.
        assert hosts == {
            f"localhost:{port}": 200,
            "api.example.com": 200,
            "evil.example": 400,
            "[::1]": 200,
        }

        events = await websocket_stream(ws, chat("pid"), headers={"origin": app_origin})
        assert events[-1]["type"] == "done"
        with pytest.raises(InvalidStatus) as refused_socket:
            await websocket_stream(ws, chat("pid"), headers={"origin": evil_origin})
        assert refused_socket.value.response.status_code == 403
        # The WebSocket client sets Host itself: a hand-written handshake names another.
        upgrade = (
            b"GET /ws HTTP/1.1\r\nhost: evil.example\r\nupgrade: websocket\r\n"
            b"connection: Upgrade\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert (await raw_http(address(served.http), upgrade)).startswith(b"HTTP/1.1 403 ")


async def test_tls_on_every_transport_and_plaintext_refused(tmp_path: Path) -> None:
    certs = certificates(tmp_path)
    tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    async with gateway(APP, *tls) as served:
        host, port = address(served.http)
        assert served.urls["SSE"] == f"https://{host}:{port}/chat/completions"
        assert served.urls["WebSocket"] == f"wss://{host}:{port}/ws"
        assert served.urls["gRPC"].startswith("grpcs://127.0.0.1:")
        assert f"  playground https://{host}:{port}/playground (open it in a browser)" in (
            served.banner
        )
        context = certs.client_context()
        async with httpx.AsyncClient(base_url=served.http, verify=context, timeout=TIMEOUT) as c:
            answer = await c.post("/chat/completions", json=chat("pid"))
            pages = [(await c.get(path)).status_code for path in ("/playground", "/v1/models")]
        assert answer.status_code == 200 and parse_sse(answer.text)[-1][2]["type"] == "done"
        assert pages == [200, 200]  # the playground and the OpenAI API are served by default
        events = await websocket_stream(served.urls["WebSocket"], chat("pid"), context=context)
        assert events[-1]["type"] == "done"
        answer_grpc = await grpc_stream(
            served.grpc_address, chat("pid"), credentials=certs.grpc_credentials()
        )
        assert answer_grpc.code == grpc.StatusCode.OK

        # A plaintext client gets no answer on either port.
        async with httpx.AsyncClient(timeout=TIMEOUT) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://{host}:{port}/healthz")
        assert await grpc_flows(served.grpc_address) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_on_grpc_needs_a_client_certificate(tmp_path: Path) -> None:
    certs = certificates(tmp_path)
    tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    async with gateway(APP, *tls, "--tls-client-ca", str(certs.client_ca)) as served:
        with_cert = certs.grpc_credentials(with_client_cert=True)
        assert await grpc_flows(served.grpc_address, credentials=with_cert) == grpc.StatusCode.OK
        without = certs.grpc_credentials()
        assert await grpc_flows(served.grpc_address, credentials=without) == (
            grpc.StatusCode.UNAVAILABLE
        )
        # HTTPS asks for a certificate but serves a client without one.
        verify = certs.client_context()
        async with httpx.AsyncClient(base_url=served.http, verify=verify, timeout=TIMEOUT) as c:
            assert (await c.get("/healthz")).status_code == 200


async def test_a_memory_store_keeps_streams_and_grace_ends_them(tmp_path: Path) -> None:
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    async with gateway(APP, "--store", "memory", "--grace", "0.2") as served:
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            answer = await client.post("/chat/completions", json=chat("pid"))
            location = answer.headers["location"]
            again = await client.get(location)
            # A kept stream whose client leaves runs on for the grace, then is cancelled.
            async with client.stream(
                "POST", "/chat/completions", json=chat("held", gate=gate, marker=marker)
            ) as running:
                async for line in running.aiter_lines():
                    if line.startswith("data: "):
                        break
        stream_id = answer.headers["x-llmbrick-stream-id"]
        assert location.startswith(f"/streams/{stream_id}?token=")
        assert [data for _, _, data in parse_sse(again.text)][-1]["type"] == "done"

        async def written() -> bool:
            return marker.exists()

        # Bounded by TIMEOUT, which the default grace (30 s) would not fit in.
        await wait_for(written, "the flow's finally block after the grace")
    assert marker.read_text() in ("CancelledError", "GeneratorExit")
    assert not gate.exists()


async def test_http_limits_pings_and_routes_turned_off(tmp_path: Path) -> None:
    options = [
        *("--max-header-bytes", "2048", "--header-timeout", "0.5", "--body-timeout", "0.5"),
        *("--keep-alive-timeout", "0.5", "--max-body-size", "1000", "--ping-interval", "0.2"),
        *("--no-openai", "--no-ui", "--no-playground"),
    ]
    gate = tmp_path / "gate"
    async with gateway(APP, *options, "--transports", "sse,websocket") as served:
        host = address(served.http)
        head = (
            b"POST /chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\n"
        )
        big_head = (
            b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"x" * 3000 + b"\r\n\r\n"
        )
        assert (await raw_http(host, big_head)).startswith(b"HTTP/1.1 431 ")
        assert (await raw_http(host, b"GET /healthz HTTP/1.1\r\n")).startswith(b"HTTP/1.1 408 ")
        body = json.dumps({**chat("pid"), "pad": "x" * 2000}).encode()
        too_big = head + b"content-length: %d\r\n\r\n" % len(body) + body
        assert (await raw_http(host, too_big)).startswith(b"HTTP/1.1 413 ")
        stalled = head + b"content-length: 100\r\n\r\n" + b"{"
        assert (await raw_http(host, stalled)).startswith(b"HTTP/1.1 408 ")
        # Keep-alive: the answer, then the server closes the idle connection (read ends).
        kept = await raw_http(host, b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        assert kept.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in kept.lower()

        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            frames: list[str] = []
            async with client.stream(
                "POST", "/chat/completions", json=chat("held", gate=gate)
            ) as silent:
                async for line in silent.aiter_lines():
                    frames.append(line)
                    if line == ": ping":
                        gate.touch()  # a ping came while the flow was silent
            routes: dict[str, int] = {}
            for method, path in (("GET", "/v1/models"), ("GET", "/playground"), ("GET", "/")):
                routes[path] = (await client.request(method, path)).status_code
            routes["/v1/ui/chat"] = (await client.post("/v1/ui/chat", json={})).status_code
        assert ": ping" in frames and any('"released"' in frame for frame in frames)
        assert set(routes.values()) == {404}, routes
        assert not any(
            line.startswith(("  OpenAI", "  AI SDK", "  playground")) for line in served.banner
        )


async def test_max_connections_refuses_the_one_too_many(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with gateway(APP, "--max-connections", "1", "--transports", "sse") as served:
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            async with client.stream(
                "POST", "/chat/completions", json=chat("held", gate=gate)
            ) as running:
                async for line in running.aiter_lines():
                    if line.startswith("data: "):
                        break
                extra = await raw_http(
                    address(served.http), b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
                )
                gate.touch()
        assert extra.startswith(b"HTTP/1.1 503 ")


async def test_an_ipv6_address_is_bound_and_printed_in_brackets() -> None:
    async with gateway(APP, "--host", "::1") as served:
        assert served.urls["SSE"].startswith("http://[::1]:")
        assert served.urls["gRPC"].startswith("grpc://[::1]:")
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            answer = await client.post("/chat/completions", json={**chat("pid"), "stream": False})
        assert answer.status_code == 200
        events = await websocket_stream(served.urls["WebSocket"], chat("pid"))
        assert events[-1]["type"] == "done"
        assert (await grpc_stream(served.grpc_address, chat("pid"))).code == grpc.StatusCode.OK
        # Nothing on IPv4: the address asked for is the one bound.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", address(served.http)[1])) != 0
