"""The gRPC adapter on a real 127.0.0.1:0 server: stream, invoke, list, statuses, cancel, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from pydantic import BaseModel

from llmbrick import (
    ChatRequest,
    Event,
    FlowRegistry,
    FlowRuntime,
    Pipeline,
    Unauthenticated,
    Unavailable,
    error_event,
)
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_grpc import GrpcClient, GrpcServer, encode_request
from llmbrick_grpc.codec import error_from_metadata
from llmbrick_grpc.stubs import flow_pb2, flow_pb2_grpc
from tests.adapters.grpc_support import HELLO, Hold, chat, normalised, raw_stream, running
from tests.support import TIMEOUT


class Search(BaseModel):
    """A flow-specific request model: its fields travel in extra_json."""

    query: str
    top_k: int = 3
    filters: dict[str, Any] = {}


def registry(hold: Hold | None = None) -> FlowRegistry:
    registry = FlowRegistry()
    registry.register("default", Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM()))

    @registry.flow("crash")
    async def crash(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "partial"}
        raise RuntimeError("secret internals")

    @registry.flow("unauthenticated")
    async def unauthenticated(request: ChatRequest) -> AsyncIterator[Event]:
        if request.session_id is None:
            raise Unauthenticated("token expired", details={"realm": "api"})
        yield {"type": "text", "text": "welcome"}

    @registry.flow("made-up-code")
    async def made_up_code(request: ChatRequest) -> AsyncIterator[Event]:
        yield error_event("QUOTA", "quota used up")

    @registry.flow("slow", timeout=0.5)
    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "waiting"}
        await asyncio.Event().wait()

    @registry.flow("burst")
    async def burst(request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(500):
            yield {"type": "text", "text": f"t{i} "}

    @registry.flow("big")
    async def big(request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(8):
            yield {"type": "text", "text": str(i) * 20_000}

    @registry.flow("search", request_model=Search)
    async def search(request: Search) -> AsyncIterator[Event]:
        yield {"type": "data", "data": request.model_dump()}

    if hold is not None:
        registry.register("hold", hold.flow)
    return registry


@pytest.fixture
async def hold() -> Hold:
    return Hold()


@pytest.fixture
async def server(hold: Hold) -> GrpcServer:
    return GrpcServer(registry(hold))


@pytest.fixture
async def address(server: GrpcServer) -> AsyncIterator[str]:
    async with running(server) as address:
        yield address


@pytest.fixture
async def client(address: str) -> AsyncIterator[GrpcClient]:
    async with GrpcClient(address, timeout=TIMEOUT) as client:
        yield client


# -- streaming, invoking, listing ---------------------------------------------------------


async def test_stream_carries_exactly_the_runtime_events(
    server: GrpcServer, client: GrpcClient
) -> None:
    expected = await server.runtime.invoke(None, chat("one two three"))
    events = [event async for event in client.stream(None, chat("one two three"))]
    assert events == expected["events"]
    assert events == [
        {"type": "text", "text": "one ", "model": "echo", "id": "1", "progress": "IN_PROGRESS"},
        {"type": "text", "text": "two ", "model": "echo", "id": "2", "progress": "IN_PROGRESS"},
        {"type": "text", "text": "three", "model": "echo", "id": "3", "progress": "IN_PROGRESS"},
        {"type": "done", "id": "4", "progress": "DONE"},
    ]


async def test_the_flow_argument_wins_and_defaults_come_from_the_request(
    client: GrpcClient,
) -> None:
    named = await client.invoke("search", {"query": "q"})
    assert named["events"][0]["data"] == {"query": "q", "top_k": 3, "filters": {}}
    from_request = await client.invoke(None, {"flow": "search", "query": "r", "top_k": 9})
    assert from_request["events"][0]["data"]["top_k"] == 9
    default = await client.invoke(None, chat("plain"))
    assert default["text"] == "plain"


async def test_flow_specific_fields_arrive_intact(client: GrpcClient) -> None:
    filters = {"year": 2024, "score": 0.5, "tags": ["a", "ü"], "nested": {"n": None, "t": True}}
    result = await client.invoke("search", {"query": "données", "top_k": 7, "filters": filters})
    data = result["events"][0]["data"]
    assert data == {"query": "données", "top_k": 7, "filters": filters}
    assert type(data["top_k"]) is int and type(data["filters"]["year"]) is int


async def test_common_request_fields_reach_the_flow_typed(
    server: GrpcServer, client: GrpcClient
) -> None:
    seen: list[ChatRequest] = []

    @server.flow("record")
    async def record(request: ChatRequest) -> AsyncIterator[Event]:
        seen.append(request)
        yield {"type": "done"}

    request = chat(
        "hi",
        model="m-1",
        sessionId="s",
        clientId="c",
        temperature=0.5,
        maxTokens=12,
        sourceLanguage="fr",
        metadata={"k": 1},
        tools=[{"type": "function"}],
    )
    request["messages"].append({"role": "tool", "content": "r", "name": "n", "toolCallId": "t1"})
    result = await client.invoke("record", request)
    assert result["error"] is None
    got = seen[0]
    strings = (got.model, got.session_id, got.client_id, got.source_language)
    assert strings == ("m-1", "s", "c", "fr")
    assert (got.temperature, got.max_tokens, got.metadata) == (0.5, 12, {"k": 1})
    assert got.messages[1].tool_call_id == "t1" and got.messages[1].name == "n"
    assert got.tools == [{"type": "function"}]


async def test_invoke_returns_events_text_and_the_error_like_the_runtime(
    server: GrpcServer, client: GrpcClient
) -> None:
    ok = await client.invoke(None, chat("a b"))
    assert ok == await server.runtime.invoke(None, chat("a b"))
    assert ok["text"] == "a b" and ok["error"] is None
    failed = await client.invoke("crash", chat("x"))
    assert failed["text"] == "partial"
    assert failed["error"] is not None and failed["error"]["code"] == "INTERNAL"
    assert [e["type"] for e in failed["events"]] == ["text", "error"]


async def test_the_unary_invoke_call(client: GrpcClient) -> None:
    result = await client.invoke_unary(None, chat("x y"))
    assert result["text"] == "x y" and result["error"] is None
    assert [e["id"] for e in result["events"]] == ["1", "2", "3"]
    stub = flow_pb2_grpc.FlowServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Invoke(encode_request(chat("bomb")), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    error = error_from_metadata(caught.value.trailing_metadata())
    assert error is not None and error["details"] == {"guard": "keyword-guard", "score": 1.0}


async def test_list_flows_matches_the_registry(server: GrpcServer, client: GrpcClient) -> None:
    flows = await client.list_flows()
    assert flows == server.runtime.registry.describe()
    assert [f["name"] for f in flows][:3] == ["default", "crash", "unauthenticated"]


async def test_server_flow_decorator_registers_on_the_runtime(
    server: GrpcServer, client: GrpcClient
) -> None:
    @server.flow("late", description="added after start")
    async def late(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "late"}

    assert (await client.invoke("late", chat("x")))["text"] == "late"
    assert {"name": "late", "description": "added after start"}.items() <= (
        (await client.list_flows())[-1].items()
    )


# -- coalescing ---------------------------------------------------------------------------


async def test_events_that_are_waiting_share_one_message(client: GrpcClient) -> None:
    raw = await raw_stream(client.channel, chat("x", flow="burst"))
    assert raw.status is grpc.StatusCode.OK
    assert [e["id"] for e in raw.events] == [str(i) for i in range(1, 502)]
    assert sum(raw.sizes) == 501
    assert len(raw.sizes) < 501 / 4, raw.sizes  # coalesced
    assert max(raw.sizes) <= 64


async def test_an_event_is_sent_at_once_while_the_flow_waits(
    hold: Hold, client: GrpcClient
) -> None:
    async with aclosing(client.stream("hold", chat("x"))) as events:
        first = await anext(events)
        assert first["text"] == "started"  # arrived although the flow has not yielded more
        hold.release.set()
        rest = [event async for event in events]
    assert [e["type"] for e in rest] == ["text", "done"]


async def test_large_events_are_split_across_messages() -> None:
    async with (
        running(GrpcServer(registry(), max_message_bytes=64 * 1024)) as address,
        GrpcClient(address, timeout=TIMEOUT) as client,
    ):
        raw = await raw_stream(client.channel, chat("x", flow="big"))
    assert raw.status is grpc.StatusCode.OK
    assert [len(e.get("text", "")) for e in raw.events] == [20_000] * 8 + [0]
    assert len(raw.sizes) >= 4  # at most a budget of 32 KiB per message


# -- statuses -----------------------------------------------------------------------------


async def test_unknown_flow_is_not_found(client: GrpcClient) -> None:
    raw = await raw_stream(client.channel, chat("x", flow="missing"))
    assert raw.events == []
    assert raw.status is grpc.StatusCode.NOT_FOUND
    assert raw.details is not None and "no flow named 'missing'" in raw.details
    assert raw.error == {
        "code": "NOT_FOUND",
        "message": raw.details,
        "details": {"flow": "missing"},
    }
    result = await client.invoke("missing", chat("x"))
    assert result["events"] == [
        {"type": "error", "error": raw.error, "id": "1", "progress": "ERROR"}
    ]


@pytest.mark.parametrize(
    ("request_", "loc"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        (chat("x", temperature=7.0), "temperature"),
        (chat("x", maxTokens=0), "maxTokens"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (chat("x", surprise=1), "surprise"),
    ],
)
async def test_invalid_requests_are_invalid_argument_with_the_field_path(
    client: GrpcClient, request_: dict[str, Any], loc: str
) -> None:
    raw = await raw_stream(client.channel, request_)
    assert raw.events == []
    assert raw.status is grpc.StatusCode.INVALID_ARGUMENT
    assert raw.details is not None and f": {loc}: " in raw.details
    assert raw.error is not None and raw.error["details"][0]["loc"] == loc
    result = await client.invoke(None, request_)
    assert result["error"] == raw.error


async def test_a_malformed_extra_json_is_invalid_argument(client: GrpcClient) -> None:
    stub = flow_pb2_grpc.FlowServiceStub(client.channel)
    for extra, problem in [("{", "malformed JSON"), ("[1]", "must be a JSON object")]:
        request = flow_pb2.StreamRequest(flow="default", extra_json=extra)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Stream(request, timeout=TIMEOUT):
                pass
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"extra_json: {problem}" in (caught.value.details() or "")
    duplicated = encode_request(chat("x", model="a"))
    duplicated.extra_json = '{"model": "b"}'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Invoke(duplicated, timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'model' is also given as a typed field" in (caught.value.details() or "")


async def test_too_many_streams_is_resource_exhausted(hold: Hold) -> None:
    runtime = FlowRuntime(registry(hold), max_streams=1)
    async with running(GrpcServer(runtime)) as address, GrpcClient(address) as client:
        async with aclosing(client.stream("hold", chat("x"))) as first:
            assert (await anext(first))["text"] == "started"
            raw = await raw_stream(client.channel, chat("y"))
            assert raw.status is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert raw.error is not None and raw.error["details"] == {
                "retryAfter": 1.0,
                "limit": "server",
            }
            result = await client.invoke(None, chat("y"))
            assert result["error"] is not None
            assert result["error"]["code"] == "RESOURCE_EXHAUSTED"
            assert result["error"]["details"] == {"retryAfter": 1.0, "limit": "server"}
            hold.release.set()


async def test_a_draining_runtime_is_unavailable(server: GrpcServer, client: GrpcClient) -> None:
    server.runtime.shutdown()
    raw = await raw_stream(client.channel, chat("x"))
    assert raw.status is grpc.StatusCode.UNAVAILABLE
    result = await client.invoke(None, chat("x"))
    assert result["error"] is not None and "shutting down" in result["error"]["message"]


@pytest.mark.parametrize(
    ("request_", "status", "texts"),
    [
        (chat("x", flow="slow"), grpc.StatusCode.DEADLINE_EXCEEDED, ["waiting"]),
        (chat("a bomb"), grpc.StatusCode.PERMISSION_DENIED, []),
        (chat("x", flow="unauthenticated"), grpc.StatusCode.UNAUTHENTICATED, []),
        (chat("x", flow="crash"), grpc.StatusCode.INTERNAL, ["partial"]),
        (chat("x", flow="made-up-code"), grpc.StatusCode.UNKNOWN, []),
    ],
)
async def test_an_error_mid_stream_is_the_terminal_event_then_the_status(
    server: GrpcServer,
    client: GrpcClient,
    request_: dict[str, Any],
    status: grpc.StatusCode,
    texts: list[str],
) -> None:
    expected = await server.runtime.invoke(None, request_)
    raw = await raw_stream(client.channel, request_)
    assert [e["text"] for e in raw.events if e["type"] == "text"] == texts
    assert raw.events[-1]["type"] == "error"
    assert normalised(raw.events) == normalised(expected["events"])
    assert raw.status is status
    assert raw.error == raw.events[-1]["error"]
    assert raw.details == raw.events[-1]["error"]["message"]
    # The Python client ends with that event and raises nothing.
    assert normalised(await client.invoke(None, request_)) == normalised(expected)


async def test_internal_errors_carry_no_internal_text(client: GrpcClient) -> None:
    raw = await raw_stream(client.channel, chat("x", flow="crash"))
    assert raw.status is grpc.StatusCode.INTERNAL
    for text in (raw.details or "", str(raw.error), str(raw.events)):
        assert "secret" not in text and "RuntimeError" not in text
    assert raw.details is not None and raw.details.startswith("internal error in flow 'crash'")


# -- deadlines, cancellation, shutdown ----------------------------------------------------


async def test_a_client_deadline_cancels_the_flow(hold: Hold, client: GrpcClient) -> None:
    events = [event async for event in client.stream("hold", chat("x"), timeout=0.3)]
    assert [e["type"] for e in events] == ["text", "error"]
    assert events[-1]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert events[-1]["id"] == "2"
    await asyncio.wait_for(hold.finished.wait(), TIMEOUT)


async def test_a_deadline_before_any_event_ends_the_stream_and_cancels_the_flow(
    server: GrpcServer, client: GrpcClient
) -> None:
    quiet = Hold(silent=True)
    server.runtime.registry.register("quiet", quiet.flow)
    # The server had the stream, so the client's deadline is its terminal event.
    result = await client.invoke("quiet", chat("x"), timeout=0.2)
    assert result["error"] is not None and result["error"]["code"] == "DEADLINE_EXCEEDED"
    assert [event["id"] for event in result["events"]] == ["1"]
    await asyncio.wait_for(quiet.finished.wait(), TIMEOUT)
    assert quiet.started.is_set()


async def test_closing_the_stream_cancels_the_flow(
    hold: Hold, server: GrpcServer, client: GrpcClient
) -> None:
    async with aclosing(client.stream("hold", chat("x"))) as events:
        assert (await anext(events))["text"] == "started"
    await asyncio.wait_for(hold.finished.wait(), TIMEOUT)
    assert not hold.release.is_set()


async def test_cancelling_a_raw_call_cancels_the_flow(hold: Hold, client: GrpcClient) -> None:
    call = flow_pb2_grpc.FlowServiceStub(client.channel).Stream(
        encode_request(chat("x", flow="hold")), timeout=TIMEOUT
    )
    first = await call.read()
    assert isinstance(first, flow_pb2.StreamResponse) and first.events[0].text == "started"
    call.cancel()
    await asyncio.wait_for(hold.finished.wait(), TIMEOUT)


async def test_stop_drains_then_ends_running_streams_with_unavailable(hold: Hold) -> None:
    server = GrpcServer(registry(hold))
    port = await server.start("127.0.0.1", 0)
    async with GrpcClient(f"127.0.0.1:{port}", timeout=TIMEOUT) as client:
        async with aclosing(client.stream("hold", chat("x"))) as events:
            assert (await anext(events))["text"] == "started"
            await server.stop(grace=0.2)
            rest = [event async for event in events]
    assert rest[-1]["type"] == "error"
    assert rest[-1]["error"]["code"] == "UNAVAILABLE"
    assert hold.finished.is_set()


async def test_graceful_stop_reports_not_serving_and_lets_streams_finish(hold: Hold) -> None:
    server = GrpcServer(registry(hold))
    port = await server.start("127.0.0.1", 0)
    async with GrpcClient(f"127.0.0.1:{port}", timeout=TIMEOUT) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        async with aclosing(client.stream("hold", chat("x"))) as events:
            assert (await anext(events))["text"] == "started"
            stopping = asyncio.create_task(server.stop(grace=TIMEOUT))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            refused = await client.invoke(None, chat("new"))
            assert refused["error"] is not None
            assert refused["error"]["code"] == "UNAVAILABLE"
            hold.release.set()
            rest = [event async for event in events]
        watch.cancel()
        await asyncio.wait_for(stopping, TIMEOUT)
    assert [e.get("text") for e in rest] == ["released", None]


# -- health, lifecycle --------------------------------------------------------------------


async def test_health_checks_report_every_service(client: GrpcClient) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "llmbrick.v1.FlowService", "llmbrick.v1.BrickService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_and_reflection_can_be_turned_off() -> None:
    server = GrpcServer(registry(), health_checks=False, reflection_service=False)
    async with running(server) as address, GrpcClient(address, timeout=TIMEOUT) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert (await client.invoke(None, HELLO))["text"] == "hello world"


async def test_port_zero_reports_the_bound_port_and_a_taken_port_fails() -> None:
    server = GrpcServer(registry())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    async with running(server) as address:
        assert address == f"127.0.0.1:{server.port}" and server.port > 0
        with pytest.raises(RuntimeError, match="already started"):
            await server.start("127.0.0.1", 0)
        with pytest.raises(RuntimeError, match="cannot bind"):
            await GrpcServer(registry()).start("127.0.0.1", server.port)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


async def test_a_shared_runtime_is_left_running_by_stop() -> None:
    runtime = FlowRuntime(registry())
    async with running(GrpcServer(runtime)):
        pass
    assert not runtime.draining
    assert (await runtime.invoke(None, HELLO))["text"] == "hello world"


async def test_a_brick_is_served_as_the_default_flow() -> None:
    async with running(GrpcServer(EchoLLM(prefix="> "))) as address:
        async with GrpcClient(address, timeout=TIMEOUT) as client:
            result = await client.invoke(None, HELLO)
    assert result["text"] == "> hello world"


async def test_an_unreachable_server_raises_unavailable() -> None:
    server = GrpcServer(registry())
    async with running(server) as address:
        pass  # stopped: nothing listens there any more
    async with GrpcClient(address, timeout=TIMEOUT) as client:
        with pytest.raises(Unavailable):
            await client.invoke(None, HELLO)
