"""OpenTelemetry tracing: stream and brick spans, their nesting, and trace context continued."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmbrick import (
    ApiKeyAuth,
    ChatRequest,
    CommonBrick,
    Event,
    FlowRegistry,
    FlowRuntime,
    LLMBrick,
    LLMBrickError,
    Pipeline,
    RequestContext,
    RuntimeObserver,
    TranslateBrick,
)
from llmbrick.bricks import (
    CommonRequest,
    EchoLLM,
    KeywordGuard,
    LLMRequest,
    TextChunk,
    TextInput,
    TranslateRequest,
)
from llmbrick.flow_control import Pump
from llmbrick.stream import FlowStream
from llmbrick_grpc import GrpcClient, GrpcServer
from llmbrick_sse import SSEServer
from llmbrick_telemetry import TracingObserver
from tests.adapters.grpc_support import running
from tests.support import TIMEOUT, parse_sse, serve_asgi
from tests.telemetry.support import KEY, KEYS, PROMPT, Ended, Hold, chat, failing, texts

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Spans:
    """A tracer provider of the test's own (never the global one) exporting into memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name.startswith(prefix)]

    def one(self, name: str) -> ReadableSpan:
        (span,) = [span for span in self.finished() if span.name == name]
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorded = Spans()
    yield recorded
    recorded.provider.shutdown()


def traced(spans: Spans, registry: FlowRegistry, **options: Any) -> FlowRuntime:
    runtime = FlowRuntime(registry, **options)
    TracingObserver(spans.provider, runtime=runtime)
    return runtime


def flows(**handlers: Any) -> FlowRegistry:
    registry = FlowRegistry()
    for name, handler in handlers.items():
        registry.register(name, handler)
    return registry


class Ids(RuntimeObserver):
    """The id of each stream started, to compare with the spans' attributes."""

    def __init__(self, runtime: FlowRuntime) -> None:
        self.ids: list[str] = []
        runtime.add_observer(self)

    def stream_started(self, stream: FlowStream) -> None:
        self.ids.append(stream.id)


def attribute_text(span: ReadableSpan) -> str:
    return " ".join(str(value) for value in (span.attributes or {}).values())


async def test_a_stream_span_names_the_stream_and_its_caller_never_its_key_or_prompt(
    spans: Spans,
) -> None:
    runtime = traced(spans, flows(texts=texts), authenticator=ApiKeyAuth(KEYS))
    ids = Ids(runtime)
    context = RequestContext(
        "python", headers={"authorization": f"Bearer {KEY}", "x-request-id": "req-42"}
    )
    assert [e["type"] async for e in runtime.run("texts", chat("texts"), context=context)] == [
        "text",
        "text",
        "done",
    ]
    span = spans.one("llmbrick.stream texts")
    assert span.kind is SpanKind.SERVER
    assert span.parent is None  # no traceparent was sent: a new trace
    attributes = dict(span.attributes or {})
    first_event = attributes.pop("llmbrick.time_to_first_event_ms")
    assert isinstance(first_event, float) and first_event >= 0
    assert attributes == {
        "llmbrick.flow": "texts",
        "llmbrick.transport": "python",
        "llmbrick.stream_id": ids.ids[0],
        "llmbrick.request_id": "req-42",
        "llmbrick.principal": "alice",
        "llmbrick.outcome": "ok",
        "llmbrick.events": 3,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert [event.name for event in span.events] == ["first event"]
    assert KEY not in attribute_text(span) and PROMPT not in attribute_text(span)


async def test_errors_mark_the_span_but_a_client_that_leaves_does_not(spans: Spans) -> None:
    hold = Hold()
    runtime = traced(spans, flows(failing=failing, hold=hold.flow))
    assert [e["type"] async for e in runtime.run("failing", chat("failing"))] == ["text", "error"]
    stream = runtime.start("hold", chat("hold"))
    async with aclosing(stream):
        async for _ in stream:
            break  # the client goes away after one event
    failed = spans.one("llmbrick.stream failing")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "UNAVAILABLE"
    assert failed.attributes is not None and failed.attributes["llmbrick.outcome"] == "UNAVAILABLE"
    cancelled = spans.one("llmbrick.stream hold")
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.attributes is not None
    assert cancelled.attributes["llmbrick.outcome"] == "CANCELLED"
    assert cancelled.attributes["llmbrick.events"] == 1


class Shout(TranslateBrick):
    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=request.text.upper())


def chat_pipeline(*extra: Any) -> Pipeline:
    pipeline = (
        Pipeline()
        .add_brick(KeywordGuard(["bomb"], name="guard"))
        .add_brick(EchoLLM(name="llm"))
        .add_brick(Shout(name="shout"))
    )
    for brick in extra:
        pipeline.add_brick(brick)
    return pipeline


async def test_brick_spans_nest_as_the_pipeline_runs_them(spans: Spans) -> None:
    runtime = traced(spans, flows(chat=chat_pipeline()))
    events = [e async for e in runtime.run("chat", chat("chat", "hello world"))]
    assert "".join(e.get("text", "") for e in events) == "HELLO WORLD"
    stream = spans.one("llmbrick.stream chat")
    guard = spans.one("llmbrick.brick guard")
    llm = spans.one("llmbrick.brick llm")
    shouts = spans.named("llmbrick.brick shout")
    assert len(shouts) == 2  # once per streamed chunk
    assert guard.parent is not None and guard.parent.span_id == stream.context.span_id
    assert llm.parent is not None and llm.parent.span_id == stream.context.span_id
    for shout in shouts:
        # A streaming brick's span contains the spans of the bricks run per item.
        assert shout.parent is not None and shout.parent.span_id == llm.context.span_id
        assert llm.start_time is not None and shout.start_time is not None
        assert llm.end_time is not None and shout.end_time is not None
        assert llm.start_time <= shout.start_time <= shout.end_time <= llm.end_time
    assert {span.context.trace_id for span in spans.finished()} == {stream.context.trace_id}
    assert dict(llm.attributes or {}) == {
        "llmbrick.brick.name": "llm",
        "llmbrick.brick.kind": "llm",
        "llmbrick.brick.mode": "stream",
    }
    assert guard.attributes is not None and guard.attributes["llmbrick.brick.kind"] == "guard"
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.finished())


class Refusing(LLMBrick):
    async def handle_stream(self, request: LLMRequest) -> AsyncIterator[TextChunk]:
        yield TextChunk(text="partial")
        raise LLMBrickError(f"the model refused {PROMPT}", code="PERMISSION_DENIED")


class Buggy(LLMBrick):
    async def handle_stream(self, request: LLMRequest) -> AsyncIterator[TextChunk]:
        yield TextChunk(text="partial")
        raise ValueError(f"a bug quoting {PROMPT}")


async def test_a_failing_brick_span_has_the_code_or_the_type_never_the_message(
    spans: Spans,
) -> None:
    runtime = traced(
        spans,
        flows(
            refused=Pipeline().add_brick(Refusing(name="refusing")),
            buggy=Pipeline().add_brick(Buggy(name="buggy")),
        ),
    )
    assert [e async for e in runtime.run("refused", chat("refused"))][-1]["type"] == "error"
    assert [e async for e in runtime.run("buggy", chat("buggy"))][-1]["type"] == "error"
    refusing = spans.one("llmbrick.brick refusing")
    assert refusing.status.status_code is StatusCode.ERROR
    assert refusing.status.description == "PERMISSION_DENIED"
    assert refusing.attributes is not None
    assert refusing.attributes["llmbrick.error_code"] == "PERMISSION_DENIED"
    buggy = spans.one("llmbrick.brick buggy")
    assert buggy.status.status_code is StatusCode.ERROR
    assert buggy.status.description == "ValueError"
    assert buggy.attributes is not None
    assert buggy.attributes["exception.type"] == "builtins.ValueError"
    for span in spans.finished():
        assert span.events == () or all(event.name == "first event" for event in span.events)
        assert PROMPT not in attribute_text(span)
        assert PROMPT not in (span.status.description or "")


async def test_spans_the_flow_and_its_bricks_open_nest_under_theirs(spans: Spans) -> None:
    tracer = spans.provider.get_tracer("test")

    async def own(request: ChatRequest) -> AsyncIterator[Event]:
        with tracer.start_as_current_span("flow work"):
            yield {"type": "text", "text": "a"}

    lookup = CommonBrick(name="lookup")

    @lookup.unary
    async def _(request: Any) -> Any:
        with tracer.start_as_current_span("brick work"):
            return {"data": {"found": True}}

    pipeline = Pipeline(request_model=CommonRequest).add_brick(lookup)
    runtime = traced(spans, flows(own=own, bricks=pipeline))
    assert [e async for e in runtime.run("own", chat("own"))][-1]["type"] == "done"
    assert [e async for e in runtime.run("bricks", {"data": {}})][-1]["type"] == "done"
    flow_work = spans.one("flow work")
    assert flow_work.parent is not None
    assert flow_work.parent.span_id == spans.one("llmbrick.stream own").context.span_id
    brick_work = spans.one("brick work")
    assert brick_work.parent is not None
    assert brick_work.parent.span_id == spans.one("llmbrick.brick lookup").context.span_id


async def test_no_stream_leaks_its_span_into_the_task_or_into_other_streams(
    spans: Spans,
) -> None:
    tracer = spans.provider.get_tracer("test")
    holds = {"one": Hold(), "two": Hold()}
    inside: dict[str, trace.Span] = {}

    def holding(name: str) -> Any:
        async def flow(request: ChatRequest) -> AsyncIterator[Event]:
            inside[name] = trace.get_current_span()
            async for event in holds[name].flow(request):
                with tracer.start_as_current_span(f"work {name}"):
                    yield event

        return flow

    runtime = traced(spans, flows(texts=texts, one=holding("one"), two=holding("two")))
    before = trace.get_current_span()
    # One after the other in the same task: two traces, the task's context as it was.
    [e async for e in runtime.run("texts", chat("texts"))]
    [e async for e in runtime.run("texts", chat("texts"))]
    assert trace.get_current_span() is before
    first, second = spans.named("llmbrick.stream texts")
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id

    # At once in two tasks, interleaved: each stream's work nests under its own span.
    async def consume(name: str) -> list[Event]:
        return [e async for e in runtime.run(name, chat(name))]

    tasks = [asyncio.create_task(consume(name)) for name in holds]
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(hold.started.wait() for hold in holds.values()))
    holds["two"].release.set()
    holds["one"].release.set()
    await asyncio.gather(*tasks)
    assert trace.get_current_span() is before
    for name in holds:
        stream = spans.one(f"llmbrick.stream {name}")
        assert inside[name].get_span_context().span_id == stream.context.span_id
        works = spans.named(f"work {name}")
        assert len(works) == 2
        assert all(
            w.parent is not None and w.parent.span_id == stream.context.span_id for w in works
        )
    assert spans.one("llmbrick.stream one").context.trace_id != (
        spans.one("llmbrick.stream two").context.trace_id
    )


async def test_a_stream_under_a_current_span_is_its_child(spans: Spans) -> None:
    runtime = traced(spans, flows(texts=texts))
    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        context = RequestContext("python", headers={"traceparent": TRACEPARENT})
        [e async for e in runtime.run("texts", chat("texts"), context=context)]
    stream = spans.one("llmbrick.stream texts")
    assert stream.kind is SpanKind.INTERNAL
    assert stream.parent is not None
    assert stream.parent.span_id == caller.get_span_context().span_id


async def test_a_stream_handed_to_another_task_mid_way_ends_its_spans_cleanly(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    # What the SSE endpoint does for a slow client: read ahead in a Pump task.
    runtime = traced(spans, flows(chat=chat_pipeline()))
    stream = runtime.start("chat", chat("chat", "one two three"))
    with caplog.at_level(logging.ERROR):
        first = await stream.__anext__()
        pump: Pump[Any] = Pump(stream, lambda event: (event, 1))
        rest: list[Event] = []
        while taken := await pump.take():
            rest.extend(taken)
        await pump.aclose()
    assert [first["text"], *(e.get("text") for e in rest[:-1])] == ["ONE ", "TWO ", "THREE"]
    assert not [r for r in caplog.records if "context" in r.getMessage().lower()]
    stream_span = spans.one("llmbrick.stream chat")
    assert stream_span.attributes is not None
    assert stream_span.attributes["llmbrick.outcome"] == "ok"
    llm = spans.one("llmbrick.brick llm")
    shouts = spans.named("llmbrick.brick shout")
    assert len(shouts) == 3
    assert all(s.parent is not None and s.parent.span_id == llm.context.span_id for s in shouts)


def assert_continues(span: ReadableSpan, kind: SpanKind = SpanKind.SERVER) -> None:
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.trace_state.get("vendor") == "opaque"
    assert span.kind is kind


async def test_traceparent_from_an_http_header_is_continued(spans: Spans) -> None:
    runtime = traced(spans, flows(chat=chat_pipeline()))
    ended = Ended(runtime)
    server = SSEServer(runtime)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"}
    async with (
        serve_asgi(server.app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client,
    ):
        response = await client.post("/chat/completions", json=chat("chat"), headers=headers)
        assert parse_sse(response.text)[-1][2]["type"] == "done"
        await ended.reach(1)
    stream = spans.one("llmbrick.stream chat")
    assert_continues(stream)
    assert stream.attributes is not None and stream.attributes["llmbrick.transport"] == "sse"
    llm = spans.one("llmbrick.brick llm")
    assert llm.parent is not None and llm.parent.span_id == stream.context.span_id


async def test_traceparent_from_grpc_metadata_is_continued(spans: Spans) -> None:
    runtime = traced(spans, flows(texts=texts))
    ended = Ended(runtime)
    metadata = [("traceparent", TRACEPARENT), ("tracestate", "vendor=opaque")]
    async with (
        running(GrpcServer(runtime)) as address,
        GrpcClient(address, metadata=metadata) as client,
    ):
        assert [e["type"] async for e in client.stream("texts", chat("texts"))][-1] == "done"
        await ended.reach(1)
    stream = spans.one("llmbrick.stream texts")
    assert_continues(stream)
    assert stream.attributes is not None and stream.attributes["llmbrick.transport"] == "grpc"
