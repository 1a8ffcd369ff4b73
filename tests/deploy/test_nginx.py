"""The shipped nginx config (deploy/nginx/llmbrick.conf) in front of a real gateway.

nginx runs the very file users copy, with only its ports (and, for the keepalive tests,
its read timeout) substituted, in front of ``llmbrick serve tests/deploy/app.py``; every
client talks to nginx alone. The scenarios are the ones a proxy breaks in practice:
buffering a stream, timing out a silent one, dropping the WebSocket upgrade, refusing
HTTP/2 for gRPC, and keeping a flow running after its client went away.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect as websocket_connect

from llmbrick_gateway import connect
from llmbrick_grpc import GrpcClient
from tests.components import ROOT, Nginx, free_port, nginx, wait_for
from tests.deploy.support import APP, SERVE, GatewayProcess, gateway
from tests.support import TIMEOUT, parse_sse

pytestmark = pytest.mark.asyncio(loop_scope="module")

NGINX_CONF = ROOT / "deploy" / "nginx" / "llmbrick.conf"
MESSAGES = [{"role": "user", "content": "hi"}]

#: The keepalive tests scale the shipped 60 s read timeout (and the gateway's 15 s pings)
#: down to seconds; the ratio of ping interval to read timeout is what they check.
SCALED_READ_TIMEOUT = "2s"
SCALED_PING_INTERVAL = 0.5
SILENCE = 5.0  # longer than the scaled read timeout, as 90 s is longer than 60 s


def render(
    *, http: int, grpc: int, upstream: GatewayProcess, read_timeout: str | None = None
) -> str:
    """The shipped config with test ports (and optionally a read timeout) substituted.

    Each replaced line must occur exactly once, so an edit of the shipped file that the
    test no longer matches fails here instead of quietly testing something else.
    """
    text = NGINX_CONF.read_text()
    substitutions = {
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen 8081 http2;": f"listen 127.0.0.1:{grpc} http2;",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream.http_port};",
        "server 127.0.0.1:50051;": f"server 127.0.0.1:{upstream.grpc_port};",
    }
    if read_timeout is not None:
        substitutions["proxy_read_timeout 60s;"] = f"proxy_read_timeout {read_timeout};"
    for old, new in substitutions.items():
        assert text.count(old) == 1, f"{NGINX_CONF} should contain {old!r} once"
        text = text.replace(old, new)
    return text


@dataclass
class Proxy:
    """nginx in front of a gateway: the URLs a client uses, and nginx itself."""

    nginx: Nginx
    http: str
    grpc: str

    def url(self, transport: str) -> str:
        return {"sse": self.http, "websocket": f"ws{self.http[4:]}/ws", "grpc": self.grpc}[
            transport
        ]


@asynccontextmanager
async def proxy_for(
    upstream: GatewayProcess, read_timeout: str | None = None
) -> AsyncIterator[Proxy]:
    """nginx running the shipped config in front of ``upstream``, on free ports."""
    http, grpc = free_port(), free_port()
    config = render(http=http, grpc=grpc, upstream=upstream, read_timeout=read_timeout)
    async with nginx(config, ports=[http, grpc]) as server:
        yield Proxy(server, f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    """``llmbrick serve tests/deploy/app.py:registry``, shared by the module's tests."""
    log = tmp_path_factory.mktemp("serve") / "gateway.log"
    async with gateway(*SERVE, f"{APP}:registry", log=log) as up:
        yield up


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxied(served: GatewayProcess) -> AsyncIterator[Proxy]:
    """The shipped config as it is (60 s read timeout) in front of ``served``."""
    async with proxy_for(served) as proxy:
        yield proxy


def request(**metadata: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "metadata": {k: str(v) for k, v in metadata.items()}}


async def logged(proxy: Proxy, pattern: str) -> None:
    """Wait until nginx's access log has a line matching ``pattern`` (written as a request
    completes, so a WebSocket's line appears once the socket closed)."""

    async def found() -> bool:
        return re.search(pattern, proxy.nginx.access_log.read_text()) is not None

    await wait_for(found, f"{pattern!r} in nginx's access log")


# --- streaming through nginx ---------------------------------------------------------

ACCESS_LINES = {
    "sse": r'"POST /chat/completions HTTP/1\.1" 200',
    "websocket": r'"GET /ws HTTP/1\.1" 101',
    "grpc": r'"POST /llmbrick\.v1\.FlowService/Stream HTTP/2\.0" 200',
}


@pytest.mark.parametrize("transport", ["sse", "websocket", "grpc"])
async def test_events_arrive_one_by_one_through_nginx(
    proxied: Proxy, transport: str, tmp_path: Path
) -> None:
    # The flow holds its remaining events until the gate file exists, and the test
    # creates it only after receiving the first event: if nginx buffered the stream,
    # the first event would never arrive and the timeout below would end the test.
    gate = tmp_path / "gate"
    events = []
    async with asyncio.timeout(TIMEOUT):
        async with (
            connect(proxied.url(transport)) as client,
            aclosing(client.stream("gated", request(gate=gate, more=3))) as stream,
        ):
            async for event in stream:
                events.append(event)
                if len(events) == 1:
                    assert not gate.exists()
                    gate.touch()
    assert [e.get("text") for e in events] == ["first ", "0 ", "1 ", "2 ", None]
    assert events[-1]["type"] == "done"
    await logged(proxied, ACCESS_LINES[transport])


async def test_sse_through_nginx_keeps_its_headers_and_carries_a_request_id(
    proxied: Proxy,
) -> None:
    async with httpx.AsyncClient(base_url=proxied.http, timeout=TIMEOUT) as client:
        answer = await client.post(
            "/chat/completions",
            json={"flow": "silent", **request(silence=0)},
            headers={"X-Request-Id": "req-1234"},
        )
        health = await client.get("/healthz")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert answer.headers["x-request-id"] == "req-1234"
    assert [data["type"] for _, _, data in parse_sse(answer.text)] == ["text", "text", "done"]
    # Without one from the client, nginx makes one (32 hex digits) for both sides' logs.
    assert health.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", health.headers["x-request-id"])


# --- silence and the read timeout ----------------------------------------------------


async def test_a_silent_stream_outlives_the_read_timeout_thanks_to_sse_pings(
    tmp_path: Path,
) -> None:
    # As in production (pings every 15 s, proxy_read_timeout 60 s, a 90 s silence), but
    # scaled: pings every 0.5 s, a 2 s read timeout and 5 s of silence.
    command = [*SERVE, f"{APP}:registry", "--ping-interval", str(SCALED_PING_INTERVAL)]
    async with (
        gateway(*command, log=tmp_path / "gateway.log") as upstream,
        proxy_for(upstream, read_timeout=SCALED_READ_TIMEOUT) as proxy,
        httpx.AsyncClient(base_url=proxy.http, timeout=SILENCE + TIMEOUT) as client,
    ):
        answer = await client.post(
            "/chat/completions", json={"flow": "silent", **request(silence=SILENCE)}
        )
        errors = proxy.nginx.errors()
    frames = parse_sse(answer.text)
    events = [data for name, _, data in frames if name != ":"]
    assert [e.get("text") for e in events] == ["before ", "after", None]
    assert events[-1]["type"] == "done"
    assert any(name == ":" and text == "ping" for name, _, text in frames)
    assert "upstream timed out" not in errors


async def test_without_pings_inside_the_read_timeout_nginx_cuts_a_silent_stream(
    served: GatewayProcess,
) -> None:
    # The control for the test above: `llmbrick serve` pings every 15 s by default, which
    # a 2 s read timeout does not wait for, so nginx ends the stream midway.
    received: list[Any] = []
    async with (
        proxy_for(served, read_timeout=SCALED_READ_TIMEOUT) as proxy,
        httpx.AsyncClient(base_url=proxy.http, timeout=SILENCE + TIMEOUT) as client,
        client.stream(
            "POST", "/chat/completions", json={"flow": "silent", **request(silence=SILENCE)}
        ) as answer,
    ):
        try:
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
        except httpx.RemoteProtocolError:
            pass  # nginx closed the connection in the middle of the chunked body
        errors = proxy.nginx.errors()
    assert [e.get("text") for e in received] == ["before "]  # no "after", no terminal event
    assert "upstream timed out" in errors


# --- a client going away -------------------------------------------------------------


async def _sse_disconnect(proxy: Proxy, marker: Path) -> None:
    async with (
        httpx.AsyncClient(base_url=proxy.http, timeout=TIMEOUT) as client,
        client.stream(
            "POST", "/chat/completions", json={"flow": "hanging", **request(marker=marker)}
        ) as answer,
    ):
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["text"] == "started"
                break
    # Leaving both blocks closed the connection to nginx mid-stream.


async def _websocket_disconnect(proxy: Proxy, marker: Path) -> None:
    # A bare socket, so that nothing but the disconnect tells the server (the project's
    # client would send a "cancel" frame first).
    start = {"type": "start", "id": "1", "request": {"flow": "hanging", **request(marker=marker)}}
    async with websocket_connect(proxy.url("websocket")) as socket:
        await socket.send(json.dumps(start))
        assert json.loads(await socket.recv())["type"] == "started"  # the server's reply
        assert json.loads(await socket.recv())["event"]["text"] == "started"


async def _grpc_disconnect(proxy: Proxy, marker: Path) -> None:
    async with GrpcClient(proxy.grpc.removeprefix("grpc://")) as client:
        stream = client.stream("hanging", request(marker=marker))
        assert (await anext(stream))["text"] == "started"
    # Closing the channel cancelled the call; nginx resets its upstream stream.
    await stream.aclose()


DISCONNECTS: dict[str, Callable[[Proxy, Path], Any]] = {
    "sse": _sse_disconnect,
    "websocket": _websocket_disconnect,
    "grpc": _grpc_disconnect,
}


@pytest.mark.parametrize("transport", list(DISCONNECTS))
async def test_a_client_leaving_nginx_cancels_the_flow(
    proxied: Proxy, served: GatewayProcess, transport: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    async with asyncio.timeout(TIMEOUT):
        await DISCONNECTS[transport](proxied, marker)

    async def written() -> bool:
        return marker.exists()

    await wait_for(written, "the flow's finally block")
    assert marker.read_text() == "CancelledError"
