"""BrickService and RemoteBrick on real 127.0.0.1:0 servers, also inside a pipeline over SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

import grpc
import pytest
from pydantic import BaseModel

from llmbrick import (
    Brick,
    ChatRequest,
    CommonBrick,
    FlowRuntime,
    LLMBrick,
    LLMBrickError,
    PermissionDenied,
    Pipeline,
    PipelineTypeError,
    Unavailable,
)
from llmbrick.bricks import (
    CommonRequest,
    CommonResponse,
    EchoLLM,
    GuardVerdict,
    KeywordGuard,
    LLMRequest,
    TextChunk,
    TextInput,
)
from llmbrick_grpc import GrpcServer, RemoteBrick
from llmbrick_grpc.codec import decode_brick_info, error_from_metadata
from llmbrick_grpc.stubs import brick_pb2, brick_pb2_grpc
from llmbrick_sse import SSEServer
from tests.adapters.grpc_support import HELLO, chat, running, threaded_server
from tests.support import TIMEOUT, serve_asgi, sse_events


class Crashing(CommonBrick):
    """Fails with internal text that must not leak."""

    async def handle(self, request: CommonRequest) -> CommonResponse:
        raise RuntimeError("secret internals")


class Picky(CommonBrick):
    """Rejects everything with an expected error."""

    async def handle(self, request: CommonRequest) -> CommonResponse:
        raise PermissionDenied("not you", details={"who": request.data.get("who")})


class Hanging(LLMBrick):
    """Streams one chunk, then waits forever; records that its finally ran."""

    def __init__(self) -> None:
        super().__init__(name="hanging")
        self.finished = asyncio.Event()

    async def handle_stream(self, request: LLMRequest) -> AsyncIterator[TextChunk]:
        try:
            yield TextChunk(text="first")
            await asyncio.Event().wait()
        finally:
            self.finished.set()


class Verdict(BaseModel):
    """Not a built-in model: a RemoteBrick needs it passed explicitly."""

    ok: bool
    note: str = ""


class Checker(Brick[CommonRequest, Verdict]):
    """A brick with a custom output model."""

    kind = "common"
    input_model = CommonRequest
    output_model = Verdict

    async def handle(self, request: CommonRequest) -> Verdict:
        return Verdict(ok=bool(request.data), note="checked")


def bricks_server() -> GrpcServer:
    return GrpcServer(
        bricks=[
            EchoLLM(),
            KeywordGuard(["bomb"]),
            Crashing(name="crashing"),
            Picky(name="picky"),
            Checker(name="checker"),
        ]
    )


@pytest.fixture
async def stub() -> AsyncIterator[brick_pb2_grpc.BrickServiceAsyncStub]:
    async with running(bricks_server()) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            yield brick_pb2_grpc.BrickServiceStub(channel)


def channel(brick: RemoteBrick) -> grpc.aio.Channel | None:
    """The brick's channel (a function, so each read is fresh for the type checker)."""
    return brick._channel


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- BrickService -------------------------------------------------------------------------


async def test_info_and_list_describe_each_brick(
    stub: brick_pb2_grpc.BrickServiceAsyncStub,
) -> None:
    info = decode_brick_info(
        await stub.Info(brick_pb2.BrickInfoRequest(name="echo"), timeout=TIMEOUT)
    )
    assert info == EchoLLM().info()
    assert (info["kind"], info["mode"], info["inputModel"]) == ("llm", "stream", "LLMRequest")
    listed = await stub.ListBricks(brick_pb2.ListBricksRequest(), timeout=TIMEOUT)
    names = [b.name for b in listed.bricks]
    assert names == ["echo", "keyword-guard", "crashing", "picky", "checker"]


async def test_unary_and_stream_carry_the_models_as_json(
    stub: brick_pb2_grpc.BrickServiceAsyncStub,
) -> None:
    verdict = await stub.Unary(
        brick_pb2.BrickRequest(name="keyword-guard", input_json='{"text": "a BOMB"}'),
        timeout=TIMEOUT,
    )
    assert GuardVerdict.model_validate_json(verdict.output_json) == GuardVerdict(
        allowed=False, reason="blocked word 'bomb'", score=1.0
    )
    request = LLMRequest.model_validate(HELLO).model_dump_json()
    chunks = [
        TextChunk.model_validate_json(text)
        async for reply in stub.Stream(
            brick_pb2.BrickRequest(name="echo", input_json=request), timeout=TIMEOUT
        )
        for text in reply.outputs_json
    ]
    assert [c.text for c in chunks] == ["hello ", "world"]
    # A unary brick called with Stream sends its one output.
    replies = [
        reply
        async for reply in stub.Stream(
            brick_pb2.BrickRequest(name="keyword-guard", input_json='{"text": "ok"}'),
            timeout=TIMEOUT,
        )
    ]
    assert [len(r.outputs_json) for r in replies] == [1]


@pytest.mark.parametrize(
    ("name", "input_json", "status", "message"),
    [
        ("nope", "{}", grpc.StatusCode.NOT_FOUND, "no brick named 'nope'; served bricks: 'echo'"),
        ("", "{}", grpc.StatusCode.NOT_FOUND, "a brick name is required"),
        ("keyword-guard", "{}", grpc.StatusCode.INVALID_ARGUMENT, ": text: Field required"),
        ("keyword-guard", "{", grpc.StatusCode.INVALID_ARGUMENT, "input_json: malformed JSON"),
        ("echo", "{}", grpc.StatusCode.FAILED_PRECONDITION, "brick 'echo' streams"),
        ("crashing", "{}", grpc.StatusCode.INTERNAL, "internal error in brick 'crashing'"),
        ("picky", '{"data": {"who": "me"}}', grpc.StatusCode.PERMISSION_DENIED, "not you"),
    ],
)
async def test_unary_errors_are_statuses(
    stub: brick_pb2_grpc.BrickServiceAsyncStub,
    name: str,
    input_json: str,
    status: grpc.StatusCode,
    message: str,
) -> None:
    exc = await failure(
        stub.Unary(brick_pb2.BrickRequest(name=name, input_json=input_json), timeout=TIMEOUT)
    )
    assert exc.code() is status
    assert message in (exc.details() or "")
    assert "secret" not in (exc.details() or "")
    error = error_from_metadata(exc.trailing_metadata())
    assert error is not None and error["code"] == status.name
    if name == "picky":
        assert error["details"] == {"who": "me"}


async def test_an_empty_name_means_the_only_brick() -> None:
    async with running(GrpcServer(KeywordGuard(["x"]))) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = brick_pb2_grpc.BrickServiceStub(channel)
            info = await stub.Info(brick_pb2.BrickInfoRequest(), timeout=TIMEOUT)
    assert info.name == "keyword-guard" and info.kind == "guard" and info.mode == "unary"


# -- RemoteBrick --------------------------------------------------------------------------


async def test_remote_brick_learns_the_remote_brick_at_construction() -> None:
    with threaded_server(EchoLLM(prefix="remote: ")) as address:
        remote = RemoteBrick(address, "echo")
        try:
            assert (remote.kind, remote.mode) == ("llm", "stream")
            assert remote.input_model is LLMRequest and remote.output_model is TextChunk
            assert remote.info() == {**EchoLLM().info(), "description": remote.description}
            pipeline = Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(remote)
            events = [e async for e in pipeline(ChatRequest.model_validate(chat("a b")))]
            assert [e["text"] for e in events] == ["remote: ", "a ", "b"]
            first = channel(remote)
            assert [c.text async for c in remote.stream(chat("again"))][-1] == "again"
            assert channel(remote) is first is not None  # one channel, reused
        finally:
            await remote.aclose()
        assert channel(remote) is None


async def test_remote_brick_inside_a_pipeline_served_over_sse() -> None:
    with threaded_server(EchoLLM()) as address:
        remote = RemoteBrick(address, "echo")
        pipeline = Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(remote)
        async with serve_asgi(SSEServer(pipeline).app) as http:
            events = await sse_events(http, chat("over two transports"))
            blocked = await sse_events(http, chat("a bomb"))
            assert channel(remote) is not None
        assert channel(remote) is None  # closed with the SSE app
    assert "".join(e.get("text", "") for e in events) == "over two transports"
    assert [e["type"] for e in events] == ["text", "text", "text", "done"]
    assert blocked[-1]["error"]["code"] == "PERMISSION_DENIED"


async def test_connect_does_not_block_a_server_on_the_same_loop() -> None:
    server = GrpcServer(bricks=[EchoLLM(), KeywordGuard(["bomb"])])
    async with running(server) as address:
        echo = await RemoteBrick.connect(address, "echo")
        guard = await RemoteBrick.connect(address, "keyword-guard")
        try:
            pipeline = Pipeline().add_brick(guard).add_brick(echo)
            runtime = FlowRuntime()
            runtime.registry.register("default", pipeline)
            assert (await runtime.invoke(None, chat("fine words")))["text"] == "fine words"
            rejected = await runtime.invoke(None, chat("the bomb"))
            assert rejected["error"] == {
                "code": "PERMISSION_DENIED",
                "message": "keyword-guard: blocked word 'bomb'",
                "details": {"guard": "keyword-guard", "score": 1.0},
            }
        finally:
            await echo.aclose()
            await guard.aclose()


async def test_the_pipeline_checks_remote_types_at_assembly() -> None:
    async with running(GrpcServer(EchoLLM())) as address:
        echo = await RemoteBrick.connect(address, "echo")
        try:
            with pytest.raises(PipelineTypeError, match="expects LLMRequest"):
                Pipeline(request_model=TextInput).add_brick(echo)
        finally:
            await echo.aclose()


async def test_schema_mismatches_and_unknown_models_fail_naming_both() -> None:
    async with running(bricks_server()) as address:
        with pytest.raises(PipelineTypeError) as caught:
            await RemoteBrick.connect(address, "echo", output_model=GuardVerdict)
        message = str(caught.value)
        assert "TextChunk (remote)" in message and "GuardVerdict (local)" in message
        with pytest.raises(PipelineTypeError, match="Verdict is not a built-in llmbrick model"):
            await RemoteBrick.connect(address, "checker")
        checker = await RemoteBrick.connect(address, "checker", output_model=Verdict)
        try:
            assert await checker.run({"data": {"a": 1}}) == Verdict(ok=True, note="checked")
        finally:
            await checker.aclose()


async def test_remote_errors_become_local_exceptions() -> None:
    server = bricks_server()
    async with running(server) as address:
        picky = await RemoteBrick.connect(address, "picky")
        crashing = await RemoteBrick.connect(address, "crashing")
        try:
            with pytest.raises(PermissionDenied, match="not you") as denied:
                await picky.run({"data": {"who": "me"}})
            assert denied.value.details == {"who": "me"}
            with pytest.raises(LLMBrickError) as crashed:
                await crashing.run({})
            assert "secret" not in crashed.value.message
            assert crashed.value.code.value == "INTERNAL"
        finally:
            await crashing.aclose()
    # The server is gone: a transport failure, without addresses in the message.
    try:
        with pytest.raises(Unavailable, match="remote brick 'picky' failed: UNAVAILABLE"):
            await picky.run({})
    finally:
        await picky.aclose()


async def test_an_unreachable_server_fails_construction_within_the_timeout() -> None:
    async with running(GrpcServer(EchoLLM())) as address:
        pass  # stopped: nothing listens there now
    with pytest.raises(LLMBrickError, match="cannot get info of remote brick 'echo'"):
        RemoteBrick(address, "echo", info_timeout=0.3)


async def test_closing_a_remote_stream_cancels_the_remote_brick() -> None:
    hanging = Hanging()
    async with running(GrpcServer(bricks=[hanging])) as address:
        remote = await RemoteBrick.connect(address, "hanging")
        try:
            chunks = cast(AsyncGenerator[Any], remote.stream(chat("x")))
            async with aclosing(chunks):
                assert (await anext(chunks)).text == "first"
            await asyncio.wait_for(hanging.finished.wait(), TIMEOUT)
        finally:
            await remote.aclose()
