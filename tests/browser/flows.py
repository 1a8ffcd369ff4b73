"""The flows the browser tests run, with the signals the tests wait on.

One :class:`Flows` serves a whole test module: a test picks a message nobody else
uses and waits on the events keyed by it (a flow's ``finally`` ran, say), so tests
never wait on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field

from llmbrick import ChatRequest, Event, FlowRegistry, PermissionDenied, Unavailable, WireModel

__all__ = ["XSS", "Flows", "SumRequest"]

#: Markup a flow yields; the page must show it as text and run nothing.
XSS = "<img src=x onerror=alert(1)>"


class SumRequest(WireModel):
    """A request that is not a chat: the playground builds a form for it."""

    numbers: list[int] = Field(min_length=1)
    label: str
    scale: float = 1.0
    mode: Literal["add", "multiply"] = "add"
    verbose: bool | None = None


class Flows:
    """A registry of test flows and what they report back to the tests."""

    def __init__(self) -> None:
        self.registry = FlowRegistry()
        self._finished: dict[str, asyncio.Event] = {}
        self._released: dict[str, asyncio.Event] = {}
        #: Keys of the ``paced`` streams that ended cancelled rather than complete.
        self.cancelled: set[str] = set()
        #: The validated requests of the ``weather`` flow, in order.
        self.weather_requests: list[ChatRequest] = []
        self._register()

    def finished(self, key: str) -> asyncio.Event:
        """Set when the ``forever`` or ``paced`` flow asked with ``key`` has run its ``finally``."""
        return self._finished.setdefault(key, asyncio.Event())

    def released(self, key: str) -> asyncio.Event:
        """What the ``paced`` flow asked with ``key`` waits for before its second part."""
        return self._released.setdefault(key, asyncio.Event())

    def _register(self) -> None:
        flow = self.registry.flow

        @flow("default", description="Echoes your last message word by word.")
        async def echo(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "You said: "}
            words = (request.messages[-1].content or "").split(" ")
            for index, word in enumerate(words):
                yield {"type": "text", "text": word if index == len(words) - 1 else word + " "}

        @flow("forever", description="Says it is working, then waits until cancelled.")
        async def forever(request: ChatRequest) -> AsyncIterator[Event]:
            key = request.messages[-1].content or ""
            try:
                yield {"type": "text", "text": "working on it"}
                yield {"type": "meta", "metadata": {"phase": "waiting"}}
                await asyncio.Event().wait()  # only a cancel ends this
            finally:
                self.finished(key).set()

        @flow("paced", description="Says part one, waits for the test, then says part two.")
        async def paced(request: ChatRequest) -> AsyncIterator[Event]:
            key = request.messages[-1].content or ""
            try:
                yield {"type": "text", "text": "part one; "}
                await self.released(key).wait()
                yield {"type": "text", "text": "part two"}
            except asyncio.CancelledError:
                self.cancelled.add(key)
                raise
            finally:
                self.finished(key).set()

        @flow("xss", description=f"Yields markup: {XSS}")
        async def xss(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": XSS}
            yield {"type": "data", "data": {"html": "<script>alert(2)</script>"}}
            yield {"type": "<b>custom</b>", "data": {"note": XSS}}

        @flow("xss-error", description="Fails with markup in its error message.")
        async def xss_error(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "about to fail "}
            raise PermissionDenied(f"refused: {XSS}")

        @flow("fail", description="Fails halfway.")
        async def fail(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "half an answer "}
            raise Unavailable("the model went away")

        @flow("weather", description="Asks the page for the weather (a client-side tool).")
        async def weather(request: ChatRequest) -> AsyncIterator[Event]:
            self.weather_requests.append(request)
            last = request.messages[-1]
            if last.role == "tool":
                report: dict[str, Any] = json.loads(last.content or "{}")
                yield {"type": "text", "text": f"It is {report['celsius']} degrees in Paris."}
                return
            arguments = json.dumps({"city": "Paris"})
            yield {"type": "text", "text": "Let me look. "}
            yield {
                "type": "tool_call",
                "data": {"id": "call-1", "name": "weather", "arguments": arguments},
            }
            yield {"type": "meta", "metadata": {"finishReason": "tool_calls"}}

        @flow("badtool", description="A tool call whose arguments are not JSON.")
        async def badtool(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "tool_call", "data": {"name": "weather", "arguments": "{city: Paris"}}

        @flow("notes", description="Text with a meta and a custom event between.")
        async def notes(request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "meta", "metadata": {"intent": "greeting"}}
            yield {"type": "text", "text": "hello"}
            yield {"type": "citation", "data": {"url": "https://example.com/a"}}
            yield {"type": "text", "text": " again"}

        @flow("sum", request_model=SumRequest, description="Adds or multiplies numbers.")
        async def total(request: SumRequest) -> AsyncIterator[Event]:
            value = 0 if request.mode == "add" else 1
            for number in request.numbers:
                value = value + number if request.mode == "add" else value * number
                yield {"type": "progress", "data": {"value": value}}
            yield {"type": "text", "text": f"{request.label}: {value * request.scale:g}"}
