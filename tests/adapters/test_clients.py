"""The three Python clients as one API: the same events, errors and options on every transport.

Every test runs real servers on real sockets (uvicorn for SSE and WebSocket, grpc.aio
for gRPC) and reaches them through ``llmbrick_gateway.connect(url)``, which picks the
client by the URL's scheme. The error policy under test (``llmbrick.client``):
``Unavailable`` when no server answered, the stream's terminal event for the rest.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme

from llmbrick import (
    ApiKeyAuth,
    ChatRequest,
    ErrorCode,
    ErrorInfo,
    Event,
    FlowRegistry,
    FlowRuntime,
    LLMBrickError,
    Pipeline,
    Unauthenticated,
    Unavailable,
    current_context,
)
from llmbrick.bricks import EchoLLM
from llmbrick.client import FlowClient, build_payload, error_in_body, exception_for
from llmbrick_gateway import connect
from llmbrick_grpc import GrpcClient, GrpcServer
from llmbrick_http import HttpSettings, TlsFiles
from llmbrick_sse import SSEClient, SSEServer
from llmbrick_websocket import WebSocketClient, WebSocketServer
from tests.adapters.grpc_support import running
from tests.gateway.cli_support import closed_port, gateway, run
from tests.support import TIMEOUT, bound_socket, serve_asgi

TRANSPORTS = ("sse", "websocket", "grpc")
HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello there"}]}
KNOWN = "'default', 'fail', 'whoami', 'hold', 'quiet'"


class Flows:
    """The flows the tests call, and what the long-running ones report."""

    def __init__(self) -> None:
        self.registry = FlowRegistry()
        self.registry.register("default", Pipeline().add_brick(EchoLLM()))
        self.registry.register("fail", self.fail)
        self.registry.register("whoami", self.whoami)
        self.registry.register("hold", self.hold)
        self.registry.register("quiet", self.quiet)
        self.finished: asyncio.Queue[str] = asyncio.Queue()

    async def fail(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Fails after its first event, with an error of its own."""
        yield {"type": "text", "text": "partial"}
        raise LLMBrickError("the model went away midway", code=ErrorCode.UNAVAILABLE)

    async def whoami(self, request: ChatRequest) -> AsyncIterator[Event]:
        """What the flow sees of the caller: a header and the principal."""
        context = current_context()
        assert context is not None
        principal = context.principal.id if context.principal is not None else None
        yield {
            "type": "data",
            "data": {"x-test": context.headers.get("x-test"), "principal": principal},
        }

    async def hold(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Says it started, then waits until the client goes away."""
        try:
            yield {"type": "text", "text": "started"}
            await asyncio.Event().wait()
        finally:
            self.finished.put_nowait("hold")

    async def quiet(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Sends nothing until the client goes away."""
        try:
            await asyncio.Event().wait()
            yield {"type": "done"}
        finally:
            self.finished.put_nowait("quiet")

    async def ended(self, name: str) -> None:
        """Wait (bounded) until flow ``name`` has run its ``finally`` block."""
        assert await asyncio.wait_for(self.finished.get(), TIMEOUT) == name


@dataclass(frozen=True)
class Certs:
    """A throwaway CA and what it signed, as PEM files."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    def read(self, name: str) -> bytes:
        return Path(getattr(self, name)).read_bytes()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    client = authority.issue_cert("client.example")
    paths = {name: str(folder / f"{name}.pem") for name in Certs.__dataclass_fields__}
    authority.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["key"])
    client.private_key_pem.write_to_path(paths["client_key"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    for blob in client.cert_chain_pems:
        blob.write_to_path(paths["client_cert"], append=True)
    return Certs(**paths)


@asynccontextmanager
async def serving(
    runtime: FlowRuntime, certs: Certs | None = None, *, mutual: bool = False
) -> AsyncIterator[dict[str, str]]:
    """``runtime`` over SSE, WebSocket and gRPC at once (TLS with ``certs``); yields the URLs."""
    http = HttpSettings(tls=TlsFiles(certs.cert, certs.key) if certs is not None else None)
    credentials = None
    if certs is not None:
        credentials = grpc.ssl_server_credentials(
            [(certs.read("key"), certs.read("cert"))],
            root_certificates=certs.read("ca") if mutual else None,
            require_client_auth=mutual,
        )
    websocket = WebSocketServer(runtime, http=http)
    secure = "s" if certs is not None else ""
    async with (
        serve_asgi(SSEServer(runtime, http=http).app, http) as sse_address,
        serve_asgi(websocket.app, http, **websocket.uvicorn_options()) as ws_address,
        running(GrpcServer(runtime, credentials=credentials)) as grpc_address,
    ):
        yield {
            "sse": f"http{secure}://{sse_address}",
            "websocket": f"ws{secure}://{ws_address}/ws",
            "grpc": f"grpc{secure}://{grpc_address}",
        }


@pytest.fixture
def flows() -> Flows:
    return Flows()


@pytest.fixture
async def urls(flows: Flows) -> AsyncIterator[dict[str, str]]:
    async with serving(FlowRuntime(flows.registry)) as found:
        yield found


def expected_error(code: str, message: str, number: int = 1, details: Any = None) -> Event:
    error: ErrorInfo = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return FlowClient.error_event(error, number)


async def events_of(url: str, flow: str, request: Any, **options: Any) -> list[Event]:
    async with connect(url, **options) as client:
        return (await client.invoke(flow, request))["events"]


# -- one API ------------------------------------------------------------------------------


async def test_connect_picks_the_client_by_scheme(certs: Certs) -> None:
    kinds: dict[str, type[FlowClient]] = {
        "http://127.0.0.1:1": SSEClient,
        "https://127.0.0.1:1": SSEClient,
        "ws://127.0.0.1:1/ws": WebSocketClient,
        "wss://127.0.0.1:1/ws": WebSocketClient,
        "grpc://127.0.0.1:1": GrpcClient,
        "grpcs://127.0.0.1:1": GrpcClient,
    }
    for url, kind in kinds.items():
        async with connect(url) as client:
            assert type(client) is kind
        assert client.closed
        with pytest.raises(RuntimeError, match="closed"):
            await client.invoke("default", HELLO)
    with pytest.raises(ValueError, match="TLS files are for https://"):
        async with connect("http://127.0.0.1:1", ca_file=certs.ca):
            pass


async def test_every_client_streams_invokes_and_lists_the_same(
    flows: Flows, urls: dict[str, str]
) -> None:
    runtime = FlowRuntime(flows.registry)
    expected = await runtime.invoke("default", HELLO)
    for transport in TRANSPORTS:
        async with connect(urls[transport]) as client:
            streamed = [event async for event in client.stream("default", HELLO)]
            typed = await client.invoke("default", ChatRequest.model_validate(HELLO))
            named = await client.invoke(None, {**HELLO, "flow": "default"})
            listed = await client.list_flows()
        assert streamed == expected["events"], transport
        assert typed == named == expected, transport
        assert listed == flows.registry.describe(), transport


async def test_server_reported_errors_are_the_same_terminal_events_everywhere(
    urls: dict[str, str],
) -> None:
    cases = {
        "unknown flow": ("nope", HELLO),
        "invalid request": ("default", {"messages": []}),
        "schema violation": ("default", {**HELLO, "temperature": 7}),
        "failing midway": ("fail", HELLO),
    }
    seen: dict[str, dict[str, list[Event]]] = {}
    for transport in TRANSPORTS:
        async with connect(urls[transport]) as client:
            seen[transport] = {
                case: (await client.invoke(flow, request))["events"]
                for case, (flow, request) in cases.items()
            }
    assert seen["sse"] == seen["websocket"] == seen["grpc"]
    got = seen["sse"]
    assert got["unknown flow"] == [
        expected_error(
            "NOT_FOUND", "no flow named 'nope'; known flows: " + KNOWN, details={"flow": "nope"}
        )
    ]
    (invalid,) = got["invalid request"]
    assert invalid["error"]["code"] == "INVALID_ARGUMENT" and invalid["id"] == "1"
    assert invalid["error"]["details"][0]["loc"] == "messages"
    assert got["schema violation"][0]["error"]["details"][0]["loc"] == "temperature"
    # A server-reported UNAVAILABLE after events is an event too, not an exception.
    assert got["failing midway"] == [
        {"type": "text", "text": "partial", "id": "1", "progress": "IN_PROGRESS"},
        expected_error("UNAVAILABLE", "the model went away midway", 2),
    ]


async def test_a_stream_left_early_is_cancelled_on_the_server(
    flows: Flows, urls: dict[str, str]
) -> None:
    for transport in TRANSPORTS:
        async with connect(urls[transport]) as client:
            stream = client.stream("hold", HELLO)
            assert (await anext(stream))["text"] == "started"
            await stream.aclose()
            await flows.ended("hold")
            # The client goes on serving.
            assert (await client.invoke("default", HELLO))["text"] == "hello there"


async def test_closing_the_client_ends_its_streams_with_cancelled(
    flows: Flows, urls: dict[str, str]
) -> None:
    for transport in TRANSPORTS:
        async with connect(urls[transport]) as client:
            stream = client.stream("hold", HELLO)
            assert (await anext(stream))["text"] == "started"
        rest = [event async for event in stream]
        assert [e["error"]["code"] for e in rest] == ["CANCELLED"], transport
        assert rest[0]["id"] == "2"
        await flows.ended("hold")


# -- servers that cannot be reached -------------------------------------------------------


def url_for(transport: str, address: str) -> str:
    return {"sse": f"http://{address}", "websocket": f"ws://{address}/ws"}.get(
        transport, f"grpc://{address}"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_connection_raises_unavailable_with_its_cause(transport: str) -> None:
    with closed_port() as held:
        url = url_for(transport, f"127.0.0.1:{held.getsockname()[1]}")
        async with connect(url) as client:
            with pytest.raises(Unavailable) as streaming:
                await client.invoke("default", HELLO)
            with pytest.raises(Unavailable) as listing:
                await client.list_flows()
    for info in (streaming, listing):
        assert info.value.__cause__ is not None
        assert info.value.code is ErrorCode.UNAVAILABLE


@asynccontextmanager
async def dropping() -> AsyncIterator[str]:
    """A TCP server that closes every connection at once, before answering anything."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"{host}:{port}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_dropped_before_any_event_raises_unavailable(transport: str) -> None:
    async with dropping() as address, connect(url_for(transport, address)) as client:
        with pytest.raises(Unavailable) as info:
            await client.invoke("default", HELLO)
    assert info.value.__cause__ is not None


@contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with bound_socket() as listening:
        host, port = listening.getsockname()
        yield f"{host}:{port}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_server_that_never_answers_is_unavailable_after_the_timeout(
    transport: str,
) -> None:
    with silent_server() as address:
        async with connect(url_for(transport, address), timeout=0.2) as client:
            with pytest.raises(Unavailable) as info:
                await client.invoke("default", HELLO)
    assert info.value.__cause__ is not None


# -- timeouts once the server has the stream ----------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "grpc"])
async def test_the_clients_timeout_ends_a_silent_stream_with_deadline_exceeded(
    flows: Flows, urls: dict[str, str], transport: str
) -> None:
    # SSE: read_timeout (connect() sets it to timeout); gRPC: the call's deadline. The
    # WebSocket client's timeout bounds its handshakes only (see the test above).
    async with connect(urls[transport], timeout=0.2) as client:
        after_one = await client.invoke("hold", HELLO)
        await flows.ended("hold")
        before_any = await client.invoke("quiet", HELLO)
        await flows.ended("quiet")
    assert [e["type"] for e in after_one["events"]] == ["text", "error"]
    assert after_one["events"][-1]["id"] == "2"
    assert after_one["error"] is not None and after_one["error"]["code"] == "DEADLINE_EXCEEDED"
    # The server had taken the stream: an event, although none came before it.
    assert [e["id"] for e in before_any["events"]] == ["1"]
    assert before_any["error"] is not None and before_any["error"]["code"] == "DEADLINE_EXCEEDED"


# -- API keys and headers -----------------------------------------------------------------


@pytest.fixture
async def keyed_urls(flows: Flows) -> AsyncIterator[dict[str, str]]:
    runtime = FlowRuntime(flows.registry, authenticator=ApiKeyAuth(["right-key name=tester"]))
    async with serving(runtime) as found:
        yield found


async def test_api_keys_and_headers_reach_the_server(keyed_urls: dict[str, str]) -> None:
    invalid = expected_error("UNAUTHENTICATED", "the API key is not valid")
    missing = expected_error(
        "UNAUTHENTICATED", "an API key is required: send 'Authorization: Bearer <key>'"
    )
    for transport in TRANSPORTS:
        url = keyed_urls[transport]
        assert await events_of(url, "default", HELLO, api_key="wrong") == [invalid], transport
        assert await events_of(url, "default", HELLO) == [missing], transport
        async with connect(url, api_key="wrong") as client:
            with pytest.raises(Unauthenticated, match="not valid"):
                await client.list_flows()
        headers = {"X-Test": f"over {transport}"}
        async with connect(url, api_key="right-key", headers=headers) as client:
            result = await client.invoke("whoami", HELLO)
            assert len(await client.list_flows()) == 5
        assert result["error"] is None, (transport, result)
        seen = result["events"][0]["data"]
        assert seen == {"x-test": f"over {transport}", "principal": "tester"}, transport


def test_client_options_are_checked_before_anything_is_sent(certs: Certs) -> None:
    with pytest.raises(ValueError, match="header name"):
        SSEClient("http://127.0.0.1:1", headers={"bad name": "x"})
    with pytest.raises(ValueError, match="one line"):
        WebSocketClient("ws://127.0.0.1:1/ws", headers={"x-a": "1\r\nx-b: 2"})
    with pytest.raises(ValueError, match="API key"):
        GrpcClient("127.0.0.1:1", api_key="two words")
    with pytest.raises(ValueError, match="ws://"):
        WebSocketClient("http://127.0.0.1:1/ws")
    with pytest.raises(ValueError, match="wss://"):
        WebSocketClient("ws://127.0.0.1:1/ws", ca_file=certs.ca)
    with pytest.raises(ValueError, match="cert_file and key_file"):
        GrpcClient("127.0.0.1:1", cert_file=certs.client_cert)
    client = SSEClient("http://127.0.0.1:1", api_key="k", headers={"Authorization": "Basic x"})
    assert client.headers == {"authorization": "Bearer k"}  # the API key wins


# -- SSE as the specification reads it ----------------------------------------------------


def crlf_app(chunks: list[bytes]) -> Any:
    """A bare ASGI app answering every request with ``chunks`` as an event stream."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def test_the_sse_client_reads_crlf_and_cr_line_ends() -> None:
    chunks = [
        b": ping\r\n\r\n",
        b'id: 1\r\nevent: message\r\ndata: {"type":"text","text":"a\\r\\nb",',
        b'"id":"1","progress":"IN_PROGRESS"}\r',  # the CR and its LF in two reads
        b"\n\r\n",
        b'id: 2\rdata: {"type":"text","text":"c","id":"2",\r',
        b'data: "progress":"IN_PROGRESS"}\r\r',  # two data lines join with a newline
        b'id: 3\r\nevent: message\r\ndata: {"type":"done","id":"3","progress":"DONE"}\r\n\r\n',
    ]
    async with (
        serve_asgi(crlf_app(chunks), lifespan="off") as address,
        SSEClient(f"http://{address}") as client,
    ):
        result = await client.invoke("default", HELLO)
    assert result == {
        "events": [
            {"type": "text", "text": "a\r\nb", "id": "1", "progress": "IN_PROGRESS"},
            {"type": "text", "text": "c", "id": "2", "progress": "IN_PROGRESS"},
            {"type": "done", "id": "3", "progress": "DONE"},
        ],
        "text": "a\r\nbc",
        "error": None,
    }


async def test_an_answer_that_is_not_llmbricks_raises_unavailable() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 502 if scope["path"].endswith("/completions") else 200
        headers = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"<h1>Bad Gateway</h1>"})

    async with serve_asgi(app, lifespan="off") as address, SSEClient(f"http://{address}") as client:
        with pytest.raises(Unavailable, match="HTTP 502") as status:
            await client.invoke("default", HELLO)
        with pytest.raises(Unavailable) as listing:
            await client.list_flows()
    assert isinstance(status.value.__cause__, httpx.HTTPStatusError)
    assert listing.value.__cause__ is not None


# -- TLS ----------------------------------------------------------------------------------


async def test_tls_on_every_transport_with_a_private_ca(certs: Certs, flows: Flows) -> None:
    async with serving(FlowRuntime(flows.registry), certs) as urls:
        assert urls["grpc"].startswith("grpcs://")
        for transport in TRANSPORTS:
            url = urls[transport]
            result = await events_of(url, "default", HELLO, ca_file=certs.ca)
            assert result[-1]["type"] == "done", transport
            # Without the CA the server's certificate is not trusted: no server answered.
            with pytest.raises(Unavailable) as untrusted:
                await events_of(url, "default", HELLO)
            assert untrusted.value.__cause__ is not None, transport
        # The gRPC client built directly: tls=True or a CA file turns TLS on.
        address = urls["grpc"].removeprefix("grpcs://")
        async with GrpcClient(address, ca_file=certs.ca) as direct:
            assert (await direct.invoke("default", HELLO))["text"] == "hello there"


async def test_grpc_mutual_tls_needs_the_client_certificate(certs: Certs, flows: Flows) -> None:
    async with serving(FlowRuntime(flows.registry), certs, mutual=True) as urls:
        url = urls["grpc"]
        with pytest.raises(Unavailable) as refused:
            await events_of(url, "default", HELLO, ca_file=certs.ca)
        assert refused.value.__cause__ is not None
        events = await events_of(
            url,
            "default",
            HELLO,
            ca_file=certs.ca,
            cert_file=certs.client_cert,
            key_file=certs.client_key,
        )
        assert events[-1]["type"] == "done"


# -- the core helpers ---------------------------------------------------------------------


def test_payloads_and_error_bodies() -> None:
    typed = ChatRequest.model_validate({**HELLO, "maxTokens": 5})
    assert build_payload("x", typed) == {**HELLO, "maxTokens": 5, "flow": "x"}
    assert build_payload(None, {"flow": "y"}) == {"flow": "y"}
    body = b'{"error": {"code": "NOT_FOUND", "message": "m", "details": 1}}'
    assert error_in_body(body) == {"code": "NOT_FOUND", "message": "m", "details": 1}
    for other in (b"<html>", b"[]", b'{"error": "x"}', b'{"error": {"code": 1, "message": ""}}'):
        assert error_in_body(other) is None
    exc = exception_for(
        {"code": "RESOURCE_EXHAUSTED", "message": "m", "details": {"limit": "caller"}}
    )
    assert exc.code is ErrorCode.RESOURCE_EXHAUSTED and exc.details["limit"] == "caller"


# -- the command line ---------------------------------------------------------------------

KEYED_APP = textwrap.dedent(
    """
    from llmbrick import FlowRegistry, Pipeline, current_context
    from llmbrick.bricks import EchoLLM

    registry = FlowRegistry()
    registry.register("default", Pipeline().add_brick(EchoLLM()))

    @registry.flow("whoami")
    async def whoami(request):
        context = current_context()
        yield {"type": "text", "text": f"{context.principal.id} {context.headers.get('x-who')}"}
    """
)


async def test_call_sends_an_api_key_and_headers(tmp_path: Path) -> None:
    (tmp_path / "keyed.py").write_text(KEYED_APP)
    # llmbrick serve turns API keys on from LLMBRICK_API_KEYS.
    env = {"LLMBRICK_API_KEYS": "k-right name=cli"}
    async with gateway(str(tmp_path / "keyed.py"), env=env) as served:
        urls = (served.http, served.urls["WebSocket"], served.urls["gRPC"])
        clean = {k: v for k, v in os.environ.items() if k != "LLMBRICK_API_KEY"}
        for url in urls:
            code, out, err = await run("call", url, "-m", "hi", base_env=clean)
            assert (code, out) == (1, ""), (url, err)
            assert err == (
                "error UNAUTHENTICATED: an API key is required: "
                "send 'Authorization: Bearer <key>'\n"
            )
            code, out, err = await run(
                "call", url, "whoami", "-m", "x", "--api-key", "k-right", "--header", "X-Who: me"
            )
            assert (code, out) == (0, "cli me\n"), (url, err)
            code, out, err = await run(
                "call", url, "-m", "hello", env={"LLMBRICK_API_KEY": "k-right"}
            )
            assert (code, out) == (0, "hello\n"), (url, err)
        returncode, _ = await served.stop()
    assert returncode == 0


async def test_call_option_mistakes_are_one_line(certs: Certs) -> None:
    cases = [
        (["--header", "no-colon"], "llmbrick: --header 'no-colon': give NAME:VALUE"),
        (["--ca-file", "/no/such.pem"], "llmbrick: --ca-file /no/such.pem: no such file"),
        (["--ca-file", certs.ca], "llmbrick: TLS files are for https://, wss:// and grpcs://"),
        (["--header", "bad name: x"], "llmbrick: header name 'bad name' is not an HTTP token"),
    ]
    for args, message in cases:
        code, out, err = await run("call", "http://127.0.0.1:1", "-m", "hi", *args)
        assert (code, out) == (2, ""), (args, err)
        assert len(err.splitlines()) == 1 and err.startswith(message), (args, err)


async def test_call_over_tls_with_a_ca_file(certs: Certs, flows: Flows) -> None:
    async with serving(FlowRuntime(flows.registry), certs) as urls:
        for url in urls.values():
            code, out, err = await run("call", url, "-m", "secure", "--ca-file", certs.ca)
            assert (code, out) == (0, "secure\n"), (url, err)
