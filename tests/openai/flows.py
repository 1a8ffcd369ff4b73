"""The flows the OpenAI API tests serve: each shows one thing an OpenAI client must see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from llmbrick import ChatRequest, Event, FlowRegistry, Pipeline, Unavailable
from llmbrick.bricks import EchoLLM, KeywordGuard

#: The weather tool the ``tools`` flow calls.
WEATHER_CALL = {"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Paris"}'}


class SumRequest(BaseModel):
    """A flow request that is not a chat."""

    numbers: list[int]


class Flows:
    """A registry of test flows, with the events tests synchronise on.

    - ``default`` (alias ``gpt-4o-mini``): keyword guard (``bomb``) + echo LLM;
    - ``tools``: calls ``get_weather`` unless the last message is the tool's answer,
      which it then reports as text;
    - ``rich``: text, a custom ``citation`` event, then a meta event with usage and
      finish reason ``length``;
    - ``inspect``: answers with the request it got, as JSON text;
    - ``vision`` (capability ``images``): answers with the content parts it was given;
    - ``hold``: one word, then waits until cancelled (sets ``started``, ``finished``);
    - ``fail``: one word, then ``UNAVAILABLE``;
    - ``private``: only principals with the ``admin`` scope may run it;
    - ``sum``: not a chat flow.
    """

    def __init__(self) -> None:
        self.registry = FlowRegistry()
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.requests: list[ChatRequest] = []
        registry = self.registry
        pipeline = Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM())
        registry.register("default", pipeline, aliases=["gpt-4o-mini"])

        @registry.flow("tools")
        async def tools(request: ChatRequest) -> AsyncIterator[Event]:
            last = request.messages[-1]
            if last.role == "tool":
                yield {"type": "text", "text": f"It is {last.content} in Paris."}
                return
            yield {"type": "tool_call", "data": dict(WEATHER_CALL)}

        @registry.flow("rich")
        async def rich(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "cut "}
            yield {"type": "citation", "data": {"url": "https://example.com/a"}}
            yield {"type": "text", "text": "short"}
            usage = {"promptTokens": 7, "completionTokens": 2, "totalTokens": 9}
            yield {"type": "meta", "metadata": {"finishReason": "length", "usage": usage}}

        @registry.flow("inspect")
        async def inspect(request: ChatRequest) -> AsyncIterator[Event]:
            self.requests.append(request)
            dumped = request.model_dump(mode="json", by_alias=False, exclude_none=True)
            yield {"type": "text", "text": json.dumps(dumped)}

        @registry.flow("vision", capabilities=["images"])
        async def vision(request: ChatRequest) -> AsyncIterator[Event]:
            message = request.messages[-1]
            kinds = [part["type"] for part in message.parts or []]
            yield {"type": "text", "text": f"{message.content} | {','.join(kinds)}"}

        @registry.flow("hold")
        async def hold(request: ChatRequest) -> AsyncIterator[Event]:
            try:
                yield {"type": "text", "text": "started"}
                self.started.set()
                await asyncio.Event().wait()
            finally:
                self.finished.set()

        @registry.flow("fail")
        async def fail(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "partial"}
            raise Unavailable("the model went away")

        @registry.flow("private", allow=["admin"])
        async def private(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "secret"}

        @registry.flow("sum", request_model=SumRequest)
        async def sum_(request: SumRequest) -> AsyncIterator[Event]:
            yield {"type": "data", "data": {"sum": sum(request.numbers)}}


def user(text: str) -> list[dict[str, Any]]:
    """One user message, as the SDKs take ``messages``."""
    return [{"role": "user", "content": text}]
