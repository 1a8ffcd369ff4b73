"""Prometheus metrics: streams of every outcome over real sockets, read back from /metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from llmbrick import (
    ApiKeyAuth,
    ChatRequest,
    Event,
    FlowRegistry,
    FlowRuntime,
    Pipeline,
    RequestContext,
    RuntimeObserver,
    TranslateBrick,
)
from llmbrick.bricks import EchoLLM, KeywordGuard, TextInput, TranslateRequest
from llmbrick_grpc import GrpcClient, GrpcServer
from llmbrick_http import build_app
from llmbrick_sse import SSEServer
from llmbrick_telemetry import (
    MetricsServer,
    PrometheusObserver,
    create_metrics_router,
    serve_metrics,
)
from tests.adapters.grpc_support import running
from tests.support import TIMEOUT, parse_sse, serve_asgi
from tests.telemetry.support import (
    KEY,
    KEYS,
    PROMPT,
    Ended,
    Hold,
    chat,
    failing,
    label_names,
    parse_metrics,
    texts,
    value,
)

AUTH = {"authorization": f"Bearer {KEY}"}


def secured_runtime(hold: Hold | None = None) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("texts", texts)
    registry.register("failing", failing)
    if hold is not None:
        registry.register("hold", hold.flow)
    return FlowRuntime(registry, authenticator=ApiKeyAuth(KEYS))


async def test_metrics_over_sse_count_ok_error_cancelled_unknown_and_unauthenticated() -> None:
    hold = Hold()
    runtime = secured_runtime(hold)
    metrics = PrometheusObserver(runtime=runtime)
    ended = Ended(runtime)
    server = SSEServer(runtime)
    app = build_app([*server.routers, create_metrics_router(metrics.registry)], server.http)
    async with (
        serve_asgi(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client,
    ):
        ok = await client.post("/chat/completions", json=chat("texts"), headers=AUTH)
        assert [data["type"] for _, _, data in parse_sse(ok.text)] == ["text", "text", "done"]
        failed = await client.post("/chat/completions", json=chat("failing"), headers=AUTH)
        assert parse_sse(failed.text)[-1][2]["error"]["code"] == "UNAVAILABLE"

        request = client.stream("POST", "/chat/completions", json=chat("hold"), headers=AUTH)
        async with request as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the flow runs and waits: the stream is active now
            during = parse_metrics((await client.get("/metrics")).text)
            assert value(during, "llmbrick_active_streams", transport="sse", flow="hold") == 1
        # Leaving the block closed the connection without reading on: a client disconnect.
        await ended.reach(3)
        assert ended.outcomes == ["ok", "UNAVAILABLE", "CANCELLED"]

        unknown = await client.post("/chat/completions", json=chat("no-such-flow"), headers=AUTH)
        assert unknown.status_code == 404
        anonymous = await client.post("/chat/completions", json=chat("texts"))
        wrong = await client.post(
            "/chat/completions", json=chat("texts"), headers={"authorization": "Bearer nope"}
        )
        assert anonymous.status_code == wrong.status_code == 401

        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    samples = parse_metrics(text)

    def streams(flow: str, outcome: str) -> float | None:
        return value(samples, "llmbrick_streams_total", transport="sse", flow=flow, outcome=outcome)

    assert streams("texts", "ok") == 1
    assert streams("failing", "UNAVAILABLE") == 1
    assert streams("hold", "CANCELLED") == 1
    assert streams("texts", "UNAVAILABLE") is None
    for flow, events in (("texts", 3), ("failing", 2), ("hold", 1)):
        labels = {"transport": "sse", "flow": flow}
        assert value(samples, "llmbrick_active_streams", **labels) == 0
        assert value(samples, "llmbrick_events_total", **labels) == events
        assert value(samples, "llmbrick_time_to_first_event_seconds_count", **labels) == 1
        assert value(samples, "llmbrick_stream_duration_seconds_count", **labels) == 1
        assert value(samples, "llmbrick_stream_duration_seconds_bucket", **labels, le="+Inf") == 1
    assert value(samples, "llmbrick_rejected_total", transport="sse", code="NOT_FOUND") == 1
    assert value(samples, "llmbrick_rejected_total", transport="sse", code="UNAUTHENTICATED") == 2
    assert value(samples, "llmbrick_auth_failures_total", transport="sse") == 2
    # Rejections carry no flow label, and a name no registry knows never becomes a label.
    assert label_names(samples, "llmbrick_rejected_total") == {frozenset({"transport", "code"})}
    assert "no-such-flow" not in text
    assert PROMPT not in text and KEY not in text
    # A private registry by default, with the process collectors beside ours.
    assert value(samples, "process_cpu_seconds_total") is not None


async def test_a_grpc_only_deployment_serves_metrics_on_a_port_of_its_own() -> None:
    runtime = secured_runtime()
    metrics = PrometheusObserver(runtime=runtime)
    ended = Ended(runtime)
    async with (
        running(GrpcServer(runtime)) as address,
        await serve_metrics(metrics.registry, "127.0.0.1", 0) as metrics_server,
    ):
        async with GrpcClient(address, metadata=[("authorization", f"Bearer {KEY}")]) as client:
            assert [e["type"] async for e in client.stream("texts", chat("texts"))][-1] == "done"
            last = [e async for e in client.stream("failing", chat("failing"))][-1]
            assert last["error"]["code"] == "UNAVAILABLE"
            missing = [e async for e in client.stream("no-such-flow", chat("no-such-flow"))]
            assert missing[-1]["error"]["code"] == "NOT_FOUND"
        async with GrpcClient(address) as anonymous:
            refused = [e async for e in anonymous.stream("texts", chat("texts"))]
            assert refused[-1]["error"]["code"] == "UNAUTHENTICATED"
        await ended.reach(2)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.get(metrics_server.url)
            head = await http.head(metrics_server.url)
            elsewhere = await http.get(metrics_server.url.replace("/metrics", "/other"))
            posted = await http.post(metrics_server.url)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = parse_metrics(response.text)
    labels = {"transport": "grpc"}
    assert value(samples, "llmbrick_streams_total", **labels, flow="texts", outcome="ok") == 1
    assert (
        value(samples, "llmbrick_streams_total", **labels, flow="failing", outcome="UNAVAILABLE")
        == 1
    )
    assert value(samples, "llmbrick_events_total", **labels, flow="texts") == 3
    assert value(samples, "llmbrick_rejected_total", **labels, code="NOT_FOUND") == 1
    assert value(samples, "llmbrick_rejected_total", **labels, code="UNAUTHENTICATED") == 1
    assert value(samples, "llmbrick_auth_failures_total", **labels) == 1
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert elsewhere.status_code == 404
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"


async def test_the_metrics_server_closes_idle_connections_and_refuses_garbage() -> None:
    threads = threading.enumerate()
    registry = CollectorRegistry()
    server = await serve_metrics(registry, "127.0.0.1", 0, path="/m")
    assert threading.enumerate() == threads  # it runs on this loop, not in a thread
    assert server.url == f"http://127.0.0.1:{server.port}/m"
    idle_reader, idle_writer = await asyncio.open_connection(server.host, server.port)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"NONSENSE\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()
    await writer.wait_closed()
    # A connection that never sends a request does not hold the server open.
    await server.aclose()
    assert await idle_reader.read() == b""
    idle_writer.close()
    await idle_writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection(server.host, server.port)
    await server.aclose()  # closing twice is fine
    with pytest.raises(ValueError, match="start with '/'"):
        MetricsServer(registry, path="metrics")


class Shout(TranslateBrick):
    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=request.text.upper())


async def test_every_brick_run_is_timed_by_flow_and_brick() -> None:
    pipeline = (
        Pipeline()
        .add_brick(KeywordGuard(["bomb"], name="guard"))
        .add_brick(EchoLLM(name="llm"))
        .add_brick(Shout(name="shout"))
    )
    registry = FlowRegistry()
    registry.register("chat", pipeline)
    runtime = FlowRuntime(registry)
    metrics = PrometheusObserver(runtime=runtime, process_metrics=False)
    events = [e async for e in runtime.run("chat", chat("chat", "hello world"))]
    assert "".join(e.get("text", "") for e in events) == "HELLO WORLD"
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    counts = {
        brick: value(samples, "llmbrick_brick_duration_seconds_count", flow="chat", brick=brick)
        for brick in ("guard", "llm", "shout")
    }
    # The translator runs once per streamed chunk.
    assert counts == {"guard": 1, "llm": 1, "shout": 2}
    assert value(samples, "process_cpu_seconds_total") is None


async def test_an_observer_added_mid_stream_ignores_the_end_of_a_stream_it_never_saw_start() -> (
    None
):
    hold = Hold()
    registry = FlowRegistry()
    registry.register("hold", hold.flow)
    runtime = FlowRuntime(registry)
    stream = runtime.start("hold", chat("hold"))
    async with aclosing(stream):
        assert (await stream.__anext__())["text"] == "started"
        metrics = PrometheusObserver(runtime=runtime)
        hold.release.set()
        assert [e["type"] async for e in stream] == ["text", "done"]
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    assert value(samples, "llmbrick_active_streams", transport="python", flow="hold") is None
    assert [e["type"] async for e in runtime.run("hold", chat("hold"))][-1] == "done"
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    assert value(samples, "llmbrick_active_streams", transport="python", flow="hold") == 0
    assert (
        value(samples, "llmbrick_streams_total", transport="python", flow="hold", outcome="ok") == 1
    )


async def odd_error(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "error", "error": {"code": "MY_OWN_CODE", "message": "made up"}}


async def test_outcomes_stay_bounded_and_each_default_registry_is_private() -> None:
    registry = FlowRegistry()
    registry.register("odd", odd_error)
    runtime = FlowRuntime(registry)
    first = PrometheusObserver(runtime=runtime)
    second = PrometheusObserver()  # a second default observer does not clash with the first
    assert first.registry is not second.registry
    assert [e["type"] async for e in runtime.run("odd", chat("odd"))] == ["error"]
    text = generate_latest(first.registry).decode()
    samples = parse_metrics(text)
    # A code a flow invents is counted as UNKNOWN, not as a new label value.
    assert (
        value(samples, "llmbrick_streams_total", transport="python", flow="odd", outcome="UNKNOWN")
        == 1
    )
    assert "MY_OWN_CODE" not in text
    assert "llmbrick_streams_total{" not in generate_latest(second.registry).decode()
    # Per stream, never per event: the runtime calls no per-event hook for it.
    assert type(first).event is RuntimeObserver.event


async def test_a_flow_allow_list_refusal_is_not_an_auth_failure() -> None:
    registry = FlowRegistry()
    registry.register("admin", texts, allow=["admins"])
    runtime = FlowRuntime(registry, authenticator=ApiKeyAuth(KEYS))
    metrics = PrometheusObserver(runtime=runtime, process_metrics=False)
    context = RequestContext("websocket", headers=AUTH)
    events = [e async for e in runtime.run("admin", chat("admin"), context=context)]
    assert events[-1]["error"]["code"] == "PERMISSION_DENIED"
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    assert (
        value(samples, "llmbrick_rejected_total", transport="websocket", code="PERMISSION_DENIED")
        == 1
    )
    assert value(samples, "llmbrick_auth_failures_total", transport="websocket") == 0
