"""Observer hooks: what metrics and tracing plugins see of streams and bricks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from llmbrick import (
    ApiKeyAuth,
    ChatRequest,
    Event,
    FlowRegistry,
    FlowRuntime,
    LLMBrickError,
    Pipeline,
    RequestContext,
    RuntimeObserver,
    TranslateBrick,
)
from llmbrick.bricks import EchoLLM, KeywordGuard, TextInput, TranslateRequest
from llmbrick.observe import StreamResult
from llmbrick.stream import FlowStream

HELLO = {"messages": [{"role": "user", "content": "hello world"}]}


class Recording(RuntimeObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def rejected(self, context: RequestContext, error: LLMBrickError) -> None:
        self.calls.append(("rejected", context.transport, error.code.value))

    def stream_started(self, stream: FlowStream) -> None:
        self.calls.append(("started", stream.flow, stream.transport))

    def first_event(self, stream: FlowStream, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("first",))

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        assert result.duration >= 0
        self.calls.append(("ended", result.outcome, result.events))


class PerEvent(RuntimeObserver):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def event(self, stream: FlowStream, event: Event) -> None:
        self.ids.append(event["id"])


class Bricks(RuntimeObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def brick_started(self, stream: FlowStream, brick: Any) -> Any:
        return brick.name

    def brick_ended(
        self, stream: FlowStream, brick: Any, token: Any, seconds: float, error: Any
    ) -> None:
        assert token == brick.name and seconds >= 0
        self.calls.append((stream.flow, brick.name, type(error).__name__ if error else None))


async def texts(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}
    yield {"type": "text", "text": "b"}


async def failing(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}
    raise LLMBrickError("upstream gone", code="UNAVAILABLE")


def runtime_with(*observers: RuntimeObserver, **options: Any) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("default", texts)
    registry.register("failing", failing)
    return FlowRuntime(registry, observers=observers, **options)


async def test_stream_hooks_see_start_first_event_and_outcome() -> None:
    seen = Recording()
    runtime = runtime_with(seen)
    assert [e["type"] async for e in runtime.run(None, HELLO)] == ["text", "text", "done"]
    assert [e["type"] async for e in runtime.run("failing", HELLO)] == ["text", "error"]
    assert [e["type"] async for e in runtime.run("missing", HELLO, transport="sse")] == ["error"]
    stream = runtime.start(None, HELLO)
    async with aclosing(stream):
        async for _ in stream:
            break  # the client went away after one event
    assert seen.calls == [
        ("started", "default", "python"),
        ("first",),
        ("ended", "ok", 3),
        ("started", "failing", "python"),
        ("first",),
        ("ended", "UNAVAILABLE", 2),
        ("rejected", "sse", "NOT_FOUND"),
        ("started", "default", "python"),
        ("first",),
        ("ended", "CANCELLED", 1),
    ]


async def test_auth_failures_are_rejections() -> None:
    seen = Recording()
    runtime = runtime_with(seen, authenticator=ApiKeyAuth(["k"]))
    context = RequestContext("grpc", headers={"authorization": "Bearer bad"})
    assert [e["type"] async for e in runtime.run(None, HELLO, context=context)] == ["error"]
    assert seen.calls == [("rejected", "grpc", "UNAUTHENTICATED")]


async def test_the_per_event_hook_runs_only_for_observers_that_want_it() -> None:
    every = PerEvent()
    runtime = runtime_with(Recording(), every)
    assert runtime._observers.per_event == (every,)
    [e async for e in runtime.run(None, HELLO)]
    [e async for e in runtime.run("failing", HELLO)]
    assert every.ids == ["1", "2", "3", "1", "2"]


class Shout(TranslateBrick):
    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=request.text.upper())


async def test_brick_hooks_time_every_brick_of_a_pipeline() -> None:
    bricks = Bricks()
    pipeline = (
        Pipeline()
        .add_brick(KeywordGuard(["bomb"], name="guard"))
        .add_brick(EchoLLM(name="llm"))
        .add_brick(Shout(name="shout"))
    )
    registry = FlowRegistry()
    registry.register("chat", pipeline)
    runtime = FlowRuntime(registry, observers=[bricks])
    events = [e async for e in runtime.run("chat", HELLO)]
    assert "".join(e.get("text", "") for e in events) == "HELLO WORLD"
    # The translator runs once per streamed chunk, inside the LLM's stream.
    assert bricks.calls == [
        ("chat", "guard", None),
        ("chat", "shout", None),
        ("chat", "shout", None),
        ("chat", "llm", None),
    ]
    bricks.calls.clear()
    bomb = {"messages": [{"role": "user", "content": "a bomb"}]}
    events = [e async for e in runtime.run("chat", bomb)]
    assert events[-1]["error"]["code"] == "PERMISSION_DENIED"
    assert bricks.calls == [("chat", "guard", None)]


async def test_a_broken_observer_is_logged_once_and_never_breaks_a_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(RuntimeObserver):
        def stream_started(self, stream: FlowStream) -> None:
            raise RuntimeError("observer bug")

    after = Recording()
    runtime = runtime_with(Broken(), after)
    with caplog.at_level(logging.ERROR, logger="llmbrick.observe"):
        for _ in range(3):
            assert [e["type"] async for e in runtime.run(None, HELLO)] == ["text", "text", "done"]
    assert len([r for r in caplog.records if "stream_started" in r.getMessage()]) == 1
    assert [c[0] for c in after.calls].count("ended") == 3
    with pytest.raises(TypeError):
        runtime.add_observer(object())  # type: ignore[arg-type]
