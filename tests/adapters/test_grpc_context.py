"""gRPC calls carry the request context: metadata, keys, per-caller limits, ids, kept streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from llmbrick import (
    ApiKeyAuth,
    CallerLimits,
    ChatRequest,
    Event,
    FlowRegistry,
    FlowRuntime,
    MemoryStore,
    current_context,
)
from llmbrick_grpc import GrpcServer, decode_event, encode_request
from llmbrick_grpc.codec import error_from_metadata
from llmbrick_grpc.stubs import flow_pb2, flow_pb2_grpc
from llmbrick_sse import SSEServer
from tests.adapters.grpc_support import running
from tests.support import TIMEOUT, Gate, quiescent, serve_asgi, until

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


async def whoami(request: ChatRequest) -> AsyncIterator[Event]:
    context = current_context()
    assert context is not None
    principal = context.principal.id if context.principal else None
    yield {
        "type": "data",
        "data": {
            "principal": principal,
            "custom": context.headers.get("x-custom"),
            "transport": context.transport,
            "deadline": context.deadline is not None,
        },
    }


def secured(**options: Any) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("default", whoami)
    registry.register("admin", whoami, allow=["admin"])
    auth = ApiKeyAuth(["k-user name=user", "k-root name=root scopes=admin"])
    return FlowRuntime(registry, authenticator=auth, **options)


async def call(channel: grpc.aio.Channel, flow: str, key: str | None, **kwargs: Any) -> Any:
    metadata = [("authorization", f"Bearer {key}")] if key else []
    metadata += kwargs.pop("metadata", [])
    stub = flow_pb2_grpc.FlowServiceStub(channel)
    responses = stub.Stream(encode_request({**HELLO, "flow": flow}), metadata=metadata, **kwargs)
    events = []
    try:
        async for response in responses:
            events += [decode_event(event) for event in response.events]
    except grpc.aio.AioRpcError as exc:
        return exc, events, responses
    return None, events, responses


async def test_keys_scopes_metadata_and_ids_over_grpc() -> None:
    async with running(GrpcServer(secured())) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            for key in (None, "nope"):
                error, _, _ = await call(channel, "default", key)
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                assert "k-user" not in (error.details() or "")
            error, _, _ = await call(channel, "admin", "k-user")
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            extra = [("x-custom", "hello"), ("x-request-id", "grpc-req-9")]
            error, events, responses = await call(
                channel, "admin", "k-root", metadata=extra, timeout=TIMEOUT
            )
            assert error is None
            assert events[0]["data"] == {
                "principal": "root",
                "custom": "hello",
                "transport": "grpc",
                "deadline": True,
            }
            initial = dict(await responses.initial_metadata())
            assert initial["x-request-id"] == "grpc-req-9"
            assert len(initial["llmbrick-stream-id"]) == 16
            stub = flow_pb2_grpc.FlowServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListFlows(flow_pb2.ListFlowsRequest())
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_callers_rate_is_resource_exhausted_with_a_retry_delay() -> None:
    runtime = secured(caller_limits=CallerLimits(rate=1.0))
    async with running(GrpcServer(runtime)) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert (await call(channel, "default", "k-user"))[0] is None
            error, _, _ = await call(channel, "default", "k-user")
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(error.trailing_metadata())
            assert int(trailing["grpc-retry-pushback-ms"]) > 0
            info = error_from_metadata(error.trailing_metadata())
            assert info is not None and info["details"]["limit"] == "caller"


def kept_runtime(gate: Gate) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("continue", gate.flow, on_disconnect="continue")
    return FlowRuntime(registry, store=MemoryStore())


async def test_resume_and_cancel_calls_and_streams_crossing_transports() -> None:
    gate = Gate()
    runtime = kept_runtime(gate)
    async with (
        running(GrpcServer(runtime)) as address,
        serve_asgi(SSEServer(runtime).app) as http_address,
        grpc.aio.insecure_channel(address) as channel,
        httpx.AsyncClient(base_url=f"http://{http_address}", timeout=TIMEOUT) as http,
    ):
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        # Started over HTTP, read again over gRPC after the first event.
        started = await http.post("/streams", json={**HELLO, "flow": "continue"})
        kept = started.json()["streamId"]
        resume = stub.Resume(flow_pb2.ResumeRequest(stream_id=kept, after=1))
        assert dict(await resume.initial_metadata())["llmbrick-stream-id"] == kept
        seen: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as cancelled:
            async for response in resume:
                for message in response.events:
                    event = decode_event(message)
                    seen.append(event["id"])
                    if event["id"] == "2":
                        await stub.Cancel(flow_pb2.CancelRequest(stream_id=kept))
        assert cancelled.value.code() is grpc.StatusCode.CANCELLED
        assert seen == ["2", "3"]
        await asyncio.wait_for(gate.done.wait(), TIMEOUT)
        assert gate.ended == ["cancelled"]
        # The whole run, over gRPC again: what was made, then the CANCELLED end.
        replay: list[Event] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for response in stub.Resume(flow_pb2.ResumeRequest(stream_id=kept)):
                replay += [decode_event(message) for message in response.events]
        assert ended.value.code() is grpc.StatusCode.CANCELLED
        assert [e.get("text", e["type"]) for e in replay] == ["t1", "t2", "error"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            async for _ in stub.Resume(flow_pb2.ResumeRequest(stream_id="nope")):
                pass
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as cancel_missing:
            await stub.Cancel(flow_pb2.CancelRequest(stream_id="nope"))
        assert cancel_missing.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method", ["Stream", "Invoke"])
async def test_a_grpc_client_gone_while_a_kept_flow_waits_leaves_the_flow_running(
    method: str,
) -> None:
    """Stream and Invoke: gRPC cancels the handler, the flow (``continue``) runs to its end."""
    gate = Gate()
    runtime = kept_runtime(gate)
    async with (
        running(GrpcServer(runtime)) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        call = getattr(stub, method)(encode_request({**HELLO, "flow": "continue"}))
        # A unary call's metadata arrives with its response: find the stream here.
        await until(lambda: runtime.active_streams == 1, "the stream started")
        (stream,) = runtime._streams.values()
        kept = stream.id
        assert stream.log is not None
        log = stream.log
        await until(lambda: log.last >= 2, "two events made")  # the flow waits at the gate
        call.cancel()
        # The client's task was inside the flow: it is left to run the flow on.
        await until(lambda: stream._leaving is not None, "the server saw the cancel")
        gate.release.set()
        await asyncio.wait_for(gate.done.wait(), TIMEOUT)
        assert gate.ended == ["done"]
        replay: list[Event] = []
        async for response in stub.Resume(flow_pb2.ResumeRequest(stream_id=kept)):
            replay += [decode_event(message) for message in response.events]
    texts = [e.get("text", e["type"]) for e in replay]
    assert texts == ["t1", "t2", "t3", "t4", "t5", "t6", "done"]


async def test_twenty_streams_of_64_kib_events_stay_within_the_byte_bound() -> None:
    produced = [0]
    registry = FlowRegistry()

    @registry.flow("big")
    async def big(request: ChatRequest) -> AsyncIterator[Event]:
        for _ in range(200):
            produced[0] += 1
            yield {"type": "text", "text": "x" * (64 << 10)}

    bound = 256 << 10
    server = GrpcServer(FlowRuntime(registry), max_buffer_bytes=bound)
    # No window growth: HTTP/2 flow control holds the sender at 64 KiB per stream.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 8 << 20)]
    async with running(server) as address:
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = flow_pb2_grpc.FlowServiceStub(channel)
            calls = [stub.Stream(encode_request({**HELLO, "flow": "big"})) for _ in range(20)]
            for each in calls:
                await each.initial_metadata()
            held = await quiescent(lambda: produced[0])
            # Per stream: the bound, one event in flight, one message being written, the window.
            limit = 20 * (bound + 3 * (64 << 10) + (1 << 20))
            assert held * (64 << 10) <= limit, f"{held} events held"
            assert held < 20 * 200
            totals = []
            for each in calls:
                totals.append(sum([len(r.events) async for r in each]))
    assert totals == [201] * 20
