"""gRPC under overload and abuse, on real 127.0.0.1 sockets.

Thousands of streams on one channel, a saturated event loop, garbage instead of a
request, clients cancelling while the server writes: every call either runs, waits
and then runs, or gets an answer from llmbrick (RESOURCE_EXHAUSTED with a retry
delay, INVALID_ARGUMENT); none fails UNAVAILABLE or CANCELLED because the server
was busy, and nothing normal is logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime
from llmbrick_grpc import GrpcServer, create_servicer, encode_request
from llmbrick_grpc.client import open_channel
from llmbrick_grpc.codec import RETRY_PUSHBACK_KEY, error_from_metadata, error_metadata
from llmbrick_grpc.server import FLOW_SERVICE
from llmbrick_grpc.stubs import flow_pb2, flow_pb2_grpc
from tests.adapters.grpc_support import HELLO, chat, running
from tests.support import TIMEOUT

#: More streams than one HTTP/2 connection may run at once (1024): the rest must queue.
STREAMS = 2000


@dataclass(frozen=True)
class Outcome:
    """How one raw ``FlowService/Stream`` call ended, as a stock gRPC client sees it."""

    status: grpc.StatusCode
    events: int
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]


async def stream_outcome(channel: grpc.aio.Channel, request: dict[str, Any]) -> Outcome:
    """Run one ``Stream`` call to its end with the generated stub; never raises."""
    call = flow_pb2_grpc.FlowServiceStub(channel).Stream(encode_request(request), timeout=TIMEOUT)
    events = 0
    try:
        async for response in call:
            events += len(response.events)
    except grpc.aio.AioRpcError:
        pass  # the status is read below
    trailers = tuple(await call.trailing_metadata() or ())
    return Outcome(await call.code(), events, await call.details() or "", trailers)


def assert_served(outcomes: list[Outcome]) -> Counter[str]:
    """Every call ran or was refused by llmbrick with a retry delay; returns the tally."""
    tally = Counter(outcome.status.name for outcome in outcomes)
    assert set(tally) <= {"OK", "RESOURCE_EXHAUSTED"}, (
        tally,
        Counter(o.details for o in outcomes if o.status.name not in ("OK", "RESOURCE_EXHAUSTED")),
    )
    for outcome in outcomes:
        if outcome.status is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert outcome.events == 0
            error = error_from_metadata(outcome.trailers)
            assert error is not None and error["details"]["retryAfter"] == 1.0
            assert (RETRY_PUSHBACK_KEY, "1000") in outcome.trailers
        else:
            assert outcome.events >= 2, outcome  # a text event, then done
    return tally


class Gate:
    """Flows that hold until the gate opens: calls pile up on a full server."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = 0
        self.running = 0
        self.peak = 0

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Say hello at once, then wait for the gate."""
        self.started += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            yield {"type": "text", "text": "held "}
            await self.open.wait()
        finally:
            self.running -= 1


# -- many streams on one channel ----------------------------------------------------------


async def test_thousands_of_streams_on_one_channel_all_run() -> None:
    """The streams beyond MAX_CONCURRENT_STREAMS wait in the client's queue, then run."""
    registry = FlowRegistry()

    @registry.flow("default")
    async def short(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "hi"}

    async with running(GrpcServer(registry)) as address:
        channel = open_channel(address)
        try:
            outcomes = await asyncio.gather(
                *(stream_outcome(channel, HELLO) for _ in range(STREAMS))
            )
        finally:
            await channel.close()
    assert assert_served(outcomes) == {"OK": STREAMS}


async def test_beyond_max_streams_is_resource_exhausted_with_a_retry_delay() -> None:
    """With the runtime's cap at 500, the calls above it get RESOURCE_EXHAUSTED, not an error."""
    gate = Gate()
    registry = FlowRegistry()
    registry.register("default", gate.flow)
    runtime = FlowRuntime(registry, max_streams=500)
    async with running(GrpcServer(runtime)) as address:
        channel = open_channel(address)

        async def call() -> Outcome:
            outcome = await stream_outcome(channel, HELLO)
            if outcome.status is grpc.StatusCode.RESOURCE_EXHAUSTED:
                gate.open.set()  # the server was seen full: let the held streams end
            return outcome

        try:
            outcomes = await asyncio.gather(*(call() for _ in range(STREAMS)))
        finally:
            await channel.close()
    tally = assert_served(outcomes)
    assert tally["RESOURCE_EXHAUSTED"] > 0 and tally["OK"] >= 500, tally
    assert gate.started == tally["OK"] and gate.peak <= 500


async def test_many_busy_streams_on_a_saturated_loop_are_never_cancelled() -> None:
    """Flows that never await keep the loop busy while two connections pour calls in.

    gRPC's C core holds calls the Python server has not picked up yet; past its
    backlog limit it cancelled them (CANCELLED, never seen by the runtime).
    """
    registry = FlowRegistry()

    @registry.flow("default")
    async def spin(request: ChatRequest) -> AsyncIterator[Event]:
        for i in range(32):
            yield {"type": "text", "text": f"{i} "}

    async with running(GrpcServer(registry)) as address:
        # Two connections (a local subchannel pool each), so more calls can wait
        # unpicked than one connection's MAX_CONCURRENT_STREAMS allows.
        channels = [
            open_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(2)
        ]
        try:
            outcomes = await asyncio.gather(
                *(stream_outcome(channels[i % 2], HELLO) for i in range(STREAMS))
            )
        finally:
            for channel in channels:
                await channel.close()
    assert assert_served(outcomes) == {"OK": STREAMS}
    assert {outcome.events for outcome in outcomes} == {33}


async def test_health_checks_answer_while_a_flow_never_awaits() -> None:
    """A flow yielding as fast as the client reads, never awaiting, does not starve the loop."""
    stop = asyncio.Event()
    produced = 0
    registry = FlowRegistry()

    @registry.flow("default")
    async def tight(request: ChatRequest) -> AsyncIterator[Event]:
        nonlocal produced
        while not stop.is_set():  # only another task can set it: the loop must turn
            produced += 1
            yield {"type": "text", "text": "x"}

    received = 0
    flowing = asyncio.Event()

    async def drain(call: Any) -> grpc.StatusCode:
        nonlocal received
        async for response in call:  # read as fast as the server writes
            received += len(response.events)
            flowing.set()
        return await call.code()  # type: ignore[no-any-return]

    async with running(GrpcServer(registry)) as address:
        channel = open_channel(address)
        try:
            call = flow_pb2_grpc.FlowServiceStub(channel).Stream(
                encode_request(HELLO), timeout=TIMEOUT
            )
            reader = asyncio.create_task(drain(call))
            await asyncio.wait_for(flowing.wait(), TIMEOUT)
            health = health_pb2_grpc.HealthStub(channel)
            before = received
            for service in ("", FLOW_SERVICE, "", FLOW_SERVICE):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert received > before  # the flow kept streaming meanwhile
            stop.set()
            assert await reader is grpc.StatusCode.OK
        finally:
            await channel.close()
    assert received == produced + 1  # and the done event


def test_the_server_options_let_unpicked_calls_wait() -> None:
    """Calls the loop has not picked up yet wait instead of being cancelled at 30 s.

    (Waiting 30 s for gRPC's default to fire is no unit test; the option is checked.)
    """
    options = dict(GrpcServer().options)
    assert options["grpc.server_max_unrequested_time_in_server"] >= 3600
    assert options["grpc.http.overload_protection"] == 0
    assert options["grpc.server.max_pending_requests"] >= 4 * options["grpc.max_concurrent_streams"]


# -- garbage instead of a request ---------------------------------------------------------

GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf message"


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/llmbrick.v1.FlowService/Stream", True),
        ("/llmbrick.v1.FlowService/Invoke", False),
        ("/llmbrick.v1.FlowService/ListFlows", False),
        ("/llmbrick.v1.BrickService/Info", False),
        ("/llmbrick.v1.BrickService/ListBricks", False),
        ("/llmbrick.v1.BrickService/Unary", False),
        ("/llmbrick.v1.BrickService/Stream", True),
    ],
)
async def test_garbage_bytes_are_invalid_argument(
    method: str, streaming: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(GrpcServer(FlowRegistry())) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            # No serializer: the bytes go on the wire as they are.
            multicallable: Any = (
                channel.unary_stream(method) if streaming else channel.unary_unary(method)
            )
            call = multicallable(GARBAGE, timeout=TIMEOUT)
            with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as caught:
                if streaming:
                    async for _ in call:
                        pass
                else:
                    await call
            error = caught.value
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            details = error.details() or ""
            assert details.startswith("invalid request: ") and "llmbrick.v1." in details
            assert "class" not in details and "DecodeError" not in details
            info = error_from_metadata(error.trailing_metadata())
            assert info is not None and info["code"] == "INVALID_ARGUMENT"
            assert info["message"] == details
            # The server goes on serving.
            reply = await flow_pb2_grpc.FlowServiceStub(channel).ListFlows(
                flow_pb2.ListFlowsRequest(), timeout=TIMEOUT
            )
            assert list(reply.flows) == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- a client cancelling while the server writes ------------------------------------------


async def test_cancels_during_writes_log_nothing_at_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients leave while large messages are on their way: normal, so no ERROR line."""
    finished = 0
    all_finished = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def large(request: ChatRequest) -> AsyncIterator[Event]:
        nonlocal finished
        try:
            while True:  # never awaits: writes follow each other as fast as they can
                yield {"type": "text", "text": "x" * 100_000}
        finally:
            finished += 1
            if finished == 40:
                all_finished.set()

    async with running(GrpcServer(registry)) as address:
        channel = open_channel(address)
        try:
            with caplog.at_level(logging.DEBUG):
                for reads in range(40):
                    call = flow_pb2_grpc.FlowServiceStub(channel).Stream(
                        encode_request(HELLO), timeout=TIMEOUT
                    )
                    for _ in range(reads % 4 + 1):
                        await call.read()
                    call.cancel()
                await asyncio.wait_for(all_finished.wait(), TIMEOUT)
        finally:
            await channel.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class _WriteAfterLeave:
    """A real servicer context whose next write meets a call the client already left.

    That is the race a cancel mid-write hits: the C core has ended the call, the
    write fails, and only then does the loop run gRPC's cancellation. Everything
    but ``write`` goes to the real context.
    """

    def __init__(self, context: Any, leave: Callable[[], object]) -> None:
        self._context = context
        self._leave = leave
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        self.writes += 1
        if self.writes == 1:
            await self._context.write(message)
            return
        self._leave()  # the client cancels ...
        # ... and the core fails the write before gRPC's notification runs.
        raise grpc.aio.InternalError('Failed "execute_batch": (SendMessageOperation,)')


async def test_a_write_failing_because_the_client_left_is_a_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished = asyncio.Event()
    registry = FlowRegistry()

    @registry.flow("default")
    async def forever(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "first"}
            await asyncio.sleep(0)  # the first event leaves in its own message
            while True:
                yield {"type": "text", "text": "more"}
                await asyncio.sleep(0)
        finally:
            finished.set()

    servicer = create_servicer(FlowRuntime(registry))
    calls: list[grpc.aio.UnaryStreamCall[Any, Any]] = []

    async def stream(request: flow_pb2.StreamRequest, context: Any) -> None:
        leaving: Any = _WriteAfterLeave(context, calls[0].cancel)
        await servicer.Stream(request, leaving)

    handler = grpc.unary_stream_rpc_method_handler(
        stream,
        request_deserializer=flow_pb2.StreamRequest.FromString,
        response_serializer=flow_pb2.StreamResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(FLOW_SERVICE, {"Stream": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with caplog.at_level(logging.DEBUG):
                calls.append(
                    flow_pb2_grpc.FlowServiceStub(channel).Stream(
                        encode_request(chat("x")), timeout=TIMEOUT
                    )
                )
                with pytest.raises(asyncio.CancelledError):
                    async for _ in calls[0]:
                        pass
                await asyncio.wait_for(finished.wait(), TIMEOUT)
    finally:
        await server.stop(None)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("RPC cancelled" in r.getMessage() for r in caplog.records)


# -- an event larger than a gRPC message may be -----------------------------------------


async def test_an_event_over_the_message_limit_is_internal_not_resource_exhausted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gRPC itself would answer RESOURCE_EXHAUSTED (retry later!) and fail the write."""
    registry = FlowRegistry()

    @registry.flow("huge")
    async def huge(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "small"}
        await asyncio.sleep(0)  # the small event leaves in its own message
        yield {"type": "text", "text": "x" * 70_000}

    async with running(GrpcServer(registry, max_message_bytes=64 * 1024)) as address:
        channel = open_channel(address, options=[("grpc.max_receive_message_length", 1 << 20)])
        try:
            with caplog.at_level(logging.INFO):
                outcome = await stream_outcome(channel, chat("x", flow="huge"))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await flow_pb2_grpc.FlowServiceStub(channel).Invoke(
                        encode_request(chat("x", flow="huge")), timeout=TIMEOUT
                    )
        finally:
            await channel.close()
    assert (outcome.status, outcome.events) == (grpc.StatusCode.INTERNAL, 1)
    assert outcome.details.startswith("internal error in flow 'huge'")
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("exceeds the gRPC message limit (65536)" in e for e in errors)


# -- the retry delay where gRPC clients look ----------------------------------------------


def test_resource_exhausted_carries_grpc_retry_pushback() -> None:
    overloaded = {"code": "RESOURCE_EXHAUSTED", "message": "full", "details": {"retryAfter": 2.5}}
    assert (RETRY_PUSHBACK_KEY, "2500") in error_metadata(overloaded)
    other = {"code": "UNAVAILABLE", "message": "draining", "details": {"retryAfter": 2.5}}
    assert [key for key, _ in error_metadata(other)] == ["llmbrick-error-bin"]
