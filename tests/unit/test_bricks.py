"""Bricks and Pipeline: handlers, direct calls, assembly-time typing, execution, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from llmbrick import (
    ChatRequest,
    CommonBrick,
    ComposeBrick,
    Event,
    FlowRegistry,
    FlowRuntime,
    GuardBrick,
    IntentionBrick,
    InvalidRequest,
    LLMBrick,
    LLMBrickError,
    Message,
    Pipeline,
    PipelineTypeError,
    RectifyBrick,
    RetrievalBrick,
    TranslateBrick,
)
from llmbrick.bricks import (
    CommonRequest,
    CommonResponse,
    ComposeRequest,
    ComposeResponse,
    Document,
    EchoLLM,
    GuardRequest,
    GuardVerdict,
    IntentResult,
    KeywordGuard,
    LLMRequest,
    RetrievalRequest,
    RetrievalResponse,
    TextChunk,
    TextInput,
    TranslateRequest,
    model_accepts,
)
from llmbrick.bricks.models import BrickEvent

HELLO = {"messages": [{"role": "user", "content": "hello big world"}]}


async def run(pipeline: Pipeline, payload: dict[str, Any] = HELLO) -> list[Event]:
    registry = FlowRegistry()
    registry.register("default", pipeline)
    return [event async for event in FlowRuntime(registry).run(None, payload)]


class Upper(RectifyBrick):
    async def handle(self, request: TextInput) -> TextInput:
        return TextInput(text=request.text.upper())


class Pirate(TranslateBrick):
    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=f"{request.target_language}:{request.text}")


# -- a brick on its own ----------------------------------------------------------------------


async def test_subclassed_unary_brick_runs_directly_with_models_or_dicts() -> None:
    guard = KeywordGuard(["bomb"])
    assert guard.mode == "unary"
    assert (await guard.run(GuardRequest(text="fine"))).allowed
    verdict = await guard.run({"text": "a BOMB"})
    assert verdict == GuardVerdict(allowed=False, reason="blocked word 'bomb'", score=1.0)
    assert [v.allowed async for v in guard.stream({"text": "ok"})] == [True]


async def test_subclassed_streaming_brick_streams_directly() -> None:
    echo = EchoLLM(prefix="> ")
    assert echo.mode == "stream"
    chunks = [c.text async for c in echo.stream(LLMRequest.model_validate(HELLO))]
    assert chunks == ["> ", "hello ", "big ", "world"]
    with pytest.raises(TypeError, match="streams"):
        await echo.run(HELLO)


async def test_decorated_handlers_on_an_instance() -> None:
    shout = CommonBrick(name="shout")

    @shout.unary
    async def handle(request: CommonRequest) -> CommonResponse:
        return CommonResponse(data={"text": str(request.data["text"]).upper()})

    assert (await shout.run({"data": {"text": "hi"}})).data == {"text": "HI"}

    counter = CommonBrick(name="counter")

    @counter.stream
    async def count(request: CommonRequest) -> AsyncIterator[dict[str, Any]]:
        for n in range(int(request.data["n"])):
            yield {"data": {"n": n}}  # dicts are validated into the output model

    outputs = [o async for o in counter.stream(CommonRequest(data={"n": 3}))]
    assert outputs == [CommonResponse(data={"n": n}) for n in range(3)]


def test_decorators_reject_the_wrong_kind_of_function() -> None:
    brick = CommonBrick()

    def sync(request: CommonRequest) -> CommonResponse:
        return CommonResponse()

    with pytest.raises(TypeError, match="async def"):
        brick.unary(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async generator"):
        brick.stream(sync)  # type: ignore[call-overload]


async def test_bad_input_is_an_invalid_request_naming_the_brick() -> None:
    with pytest.raises(InvalidRequest, match="input for brick 'keyword-guard'"):
        await KeywordGuard([]).run({"nope": 1})


async def test_bad_output_is_an_error_naming_the_brick() -> None:
    brick = CommonBrick(name="liar")

    @brick.unary
    async def handle(request: CommonRequest) -> Any:
        return "not a model"

    with pytest.raises(LLMBrickError, match="brick 'liar' produced str, expected CommonResponse"):
        await brick.run({})


async def test_a_brick_without_handler_says_how_to_add_one() -> None:
    with pytest.raises(TypeError, match="has no handler"):
        await CommonBrick(name="empty").run({})
    with pytest.raises(PipelineTypeError, match="has no handler"):
        Pipeline().add_brick(LLMBrick(name="empty"))


def test_info_describes_the_brick() -> None:
    info = EchoLLM().info()
    assert info["name"] == "echo"
    assert info["kind"] == "llm"
    assert info["mode"] == "stream"
    assert info["inputModel"] == "LLMRequest"
    assert info["outputModel"] == "TextChunk"
    assert "messages" in info["inputSchema"]["properties"]
    assert repr(EchoLLM()) == "<EchoLLM 'echo' llm>"
    assert "deterministic" in EchoLLM().description


def test_model_accepts_is_structural() -> None:
    assert model_accepts(LLMRequest, ChatRequest)
    assert model_accepts(TextInput, GuardRequest)
    assert not model_accepts(LLMRequest, TextChunk)
    assert not model_accepts(TextChunk, TextInput.__base__)  # type: ignore[arg-type]

    class Other(BaseModel):
        messages: list[str]

    assert not model_accepts(LLMRequest, Other)


# -- assembly --------------------------------------------------------------------------------


def test_add_brick_is_chainable_and_tracks_the_output_type() -> None:
    pipeline = Pipeline()
    assert pipeline.add_brick(KeywordGuard([])) is pipeline
    assert pipeline.output_model is ChatRequest
    pipeline.add_brick(EchoLLM())
    assert pipeline.output_model is TextChunk
    assert [b.name for b in pipeline.bricks] == ["keyword-guard", "echo"]
    assert repr(pipeline) == "<Pipeline keyword-guard -> echo>"
    assert [b["name"] for b in pipeline.info()["bricks"]] == ["keyword-guard", "echo"]


def test_a_type_mismatch_fails_at_assembly_naming_both_sides() -> None:
    compose = ComposeBrick(name="composer")

    @compose.unary
    async def handle(request: ComposeRequest) -> ComposeResponse:
        return ComposeResponse(output={})

    with pytest.raises(PipelineTypeError) as caught:
        Pipeline().add_brick(EchoLLM()).add_brick(compose)
    message = str(caught.value)
    assert "'composer'" in message and "ComposeRequest" in message
    assert "'echo'" in message and "TextChunk" in message
    assert isinstance(caught.value, TypeError)
    with pytest.raises(PipelineTypeError, match="the pipeline's request produces ChatRequest"):
        Pipeline().add_brick(compose)
    with pytest.raises(PipelineTypeError, match="needs a Brick"):
        Pipeline().add_brick("echo")  # type: ignore[arg-type]


# -- execution -------------------------------------------------------------------------------


async def test_guard_then_llm_streams_text_events() -> None:
    events = await run(Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM()))
    assert [(e["type"], e.get("text")) for e in events] == [
        ("text", "hello "),
        ("text", "big "),
        ("text", "world"),
        ("done", None),
    ]
    assert events[0]["model"] == "echo"


async def test_guard_rejection_ends_the_stream_with_permission_denied() -> None:
    events = await run(
        Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM()),
        {"messages": [{"role": "user", "content": "build a bomb"}]},
    )
    assert len(events) == 1
    assert events[0]["error"]["code"] == "PERMISSION_DENIED"
    assert events[0]["error"]["details"] == {"guard": "keyword-guard", "score": 1.0}


async def test_guard_on_streamed_text_checks_each_chunk() -> None:
    pipeline = Pipeline().add_brick(EchoLLM()).add_brick(KeywordGuard(["big"]))
    events = await run(pipeline)
    assert [e["type"] for e in events] == ["text", "error"]
    assert events[0]["text"] == "hello "


async def test_unary_bricks_after_a_stream_apply_to_each_item() -> None:
    pipeline = Pipeline().add_brick(EchoLLM()).add_brick(Pirate(target_language="pt"))
    events = await run(pipeline)
    assert [e.get("text") for e in events[:-1]] == ["pt:hello ", "pt:big ", "pt:world"]


async def test_rewriters_before_the_llm_change_the_user_message() -> None:
    pipeline = Pipeline().add_brick(Upper()).add_brick(EchoLLM())
    events = await run(pipeline)
    assert "".join(e.get("text", "") for e in events) == "HELLO BIG WORLD"


async def test_streaming_bricks_after_a_stream_consume_each_item() -> None:
    splitter = LLMBrick(name="letters")
    splitter.input_model = TextChunk
    splitter.output_model = TextChunk

    @splitter.stream
    async def letters(request: TextChunk) -> AsyncIterator[TextChunk]:
        for letter in request.text.strip():
            yield TextChunk(text=letter)

    pipeline = Pipeline().add_brick(EchoLLM()).add_brick(splitter)
    events = await run(pipeline, {"messages": [{"role": "user", "content": "ab cd"}]})
    assert [e.get("text") for e in events[:-1]] == ["a", "b", "c", "d"]


class Library(RetrievalBrick):
    async def handle(self, request: RetrievalRequest) -> RetrievalResponse:
        docs = [Document(id=f"d{n}", text=request.query, title=f"Doc {n}") for n in range(2)]
        return RetrievalResponse(documents=docs[: request.max_results])


class Intent(IntentionBrick):
    async def handle(self, request: TextInput) -> IntentResult:
        return IntentResult(intent="greeting", confidence=0.9)


async def test_rag_pipeline_guard_intent_retrieval_llm_translate() -> None:
    pipeline = (
        Pipeline()
        .add_brick(KeywordGuard(["bomb"]))
        .add_brick(Intent())
        .add_brick(Library(max_results=1))
        .add_brick(EchoLLM())
        .add_brick(Pirate(target_language="fr"))
    )
    events = await run(pipeline)
    assert events[0] == {
        "type": "meta",
        "metadata": {"intent": "greeting", "confidence": 0.9},
        "id": "1",
        "progress": "IN_PROGRESS",
    }
    text = "".join(e.get("text", "") for e in events)
    # The translator runs once per streamed chunk.
    assert text == "fr:[1 fr:document(s): fr:Doc fr:0] fr:hello fr:big fr:world"
    assert events[-1]["type"] == "done"


async def test_retrieval_on_its_own_produces_data_events() -> None:
    pipeline = Pipeline(request_model=RetrievalRequest).add_brick(Library())
    events = await run(pipeline, {"query": "q", "maxResults": 1})
    assert events[0]["type"] == "data"
    assert events[0]["data"] == {
        "documents": [{"id": "d0", "text": "q", "title": "Doc 0", "metadata": {}}]
    }


async def test_pipeline_with_only_gates_emits_the_request_as_data() -> None:
    events = await run(Pipeline().add_brick(KeywordGuard([])))
    assert events[0]["type"] == "data"
    assert events[0]["data"]["messages"][0]["content"] == "hello big world"


async def test_cancelling_a_pipeline_cancels_the_running_brick_and_runs_every_finally() -> None:
    trail: list[str] = []
    started = asyncio.Event()

    class Slow(LLMBrick):
        async def handle_stream(self, request: LLMRequest) -> AsyncIterator[TextChunk]:
            try:
                yield TextChunk(text="first")
                started.set()
                await asyncio.Event().wait()
                yield TextChunk(text="never")
            except asyncio.CancelledError:
                trail.append("brick cancelled")
                raise
            finally:
                trail.append("brick finally")

    class Watching(GuardBrick):
        async def handle(self, request: GuardRequest) -> GuardVerdict:
            return GuardVerdict(allowed=True)

    registry = FlowRegistry()
    registry.register("default", Pipeline().add_brick(Watching()).add_brick(Slow()))
    runtime = FlowRuntime(registry)

    async def consume() -> None:
        async for _ in runtime.run(None, HELLO):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trail == ["brick cancelled", "brick finally"]
    assert runtime.active_streams == 0


async def test_runtime_aclose_closes_every_brick() -> None:
    closed: list[str] = []

    class Closing(EchoLLM):
        async def aclose(self) -> None:
            closed.append(self.name)

    registry = FlowRegistry()
    registry.register("a", Pipeline().add_brick(Closing(name="one")))
    registry.register("b", Closing(name="two"))
    await FlowRuntime(registry).aclose()
    assert closed == ["one", "two"]


async def test_echo_delay_paces_tokens() -> None:
    echo = EchoLLM(delay=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks = [c async for c in echo.stream(LLMRequest.model_validate(HELLO))]
    assert len(chunks) == 3
    assert loop.time() - start >= 0.03


# -- chat API fields and brick events --------------------------------------------------------


def test_an_assistant_message_may_carry_tool_calls_instead_of_content() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = Message.model_validate({"role": "assistant", "toolCalls": [call]})
    assert message.content is None and message.tool_calls == [call]
    assert message.model_dump(exclude_none=True) == {"role": "assistant", "toolCalls": [call]}
    reply = Message.model_validate({"role": "tool", "content": "42", "tool_call_id": "c1"})
    assert reply.tool_call_id == "c1"
    with pytest.raises(ValidationError, match="content is required"):
        Message.model_validate({"role": "user"})
    with pytest.raises(ValidationError, match="content is required"):
        Message.model_validate({"role": "assistant", "content": None, "toolCalls": []})
    with pytest.raises(ValidationError, match="only an assistant message carries tool_calls"):
        Message.model_validate({"role": "user", "content": "x", "toolCalls": [call]})


def test_chat_api_fields_flow_from_the_chat_request_into_the_llm_request() -> None:
    fields = {
        "toolChoice": "auto",
        "topP": 0.5,
        "stop": ["x"],
        "seed": 1,
        "responseFormat": {"type": "json_object"},
        "user": "u",
    }
    chat = ChatRequest.model_validate({**HELLO, **fields})
    assert ChatRequest.model_validate({**HELLO, "top_p": 0.5, "response_format": {}}).top_p == 0.5
    assert model_accepts(LLMRequest, ChatRequest)
    converted = EchoLLM().to_input(chat)
    assert converted.model_dump(include={"tool_choice", "top_p", "stop", "seed"}) == {
        "toolChoice": "auto",
        "topP": 0.5,
        "stop": ["x"],
        "seed": 1,
    }
    assert (converted.response_format, converted.user) == ({"type": "json_object"}, "u")
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({**HELLO, "topP": 1.5})
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({**HELLO, "frequencyPenalty": 1})


def test_a_brick_event_is_its_event_and_never_a_terminal_one() -> None:
    assert BrickEvent(type="tool_call", data={"id": "1"}).to_event() == {
        "type": "tool_call",
        "data": {"id": "1"},
    }
    assert BrickEvent(type="meta", metadata={"k": 1}).to_event() == {
        "type": "meta",
        "metadata": {"k": 1},
    }
    with pytest.raises(ValidationError, match="only the runtime sends it"):
        BrickEvent(type="done")
    with pytest.raises(ValidationError):
        BrickEvent(type="Tool Call")


async def test_brick_events_skip_the_later_bricks_and_keep_their_place() -> None:
    class Narrating(LLMBrick):
        def check_output(self, value: Any) -> Any:
            return value if isinstance(value, BrickEvent) else super().check_output(value)

        async def handle_stream(  # type: ignore[override]
            self, request: LLMRequest
        ) -> AsyncIterator[TextChunk | BrickEvent]:
            yield TextChunk(text="a")
            yield BrickEvent(type="progress", data={"step": 1})
            yield TextChunk(text="b")

    events = await run(Pipeline().add_brick(Narrating()).add_brick(Upper()))
    assert [(e["type"], e.get("text"), e.get("data")) for e in events] == [
        ("text", "A", None),
        ("progress", None, {"step": 1}),
        ("text", "B", None),
        ("done", None, None),
    ]


def test_a_brick_that_would_throw_the_text_away_is_refused_with_the_reason() -> None:
    summarise = CommonBrick(name="summarise")

    @summarise.unary
    async def _(request: CommonRequest) -> CommonResponse:
        return CommonResponse(data={"words": len(request.data)})

    with pytest.raises(PipelineTypeError) as caught:
        Pipeline().add_brick(EchoLLM(name="llm")).add_brick(summarise)
    message = str(caught.value)
    assert (
        "brick 'summarise' (common) expects CommonRequest, but brick 'llm' produces TextChunk"
        in message
    )
    assert "none of TextChunk's fields (text, model) is one of CommonRequest's (data)" in message
    # As a pipeline's first step it fits: a chat request has nothing to lose here either way.
    assert model_accepts(CommonRequest, CommonRequest)
