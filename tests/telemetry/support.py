"""Flows, a stream-end waiter and a /metrics reader shared by the telemetry tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llmbrick import ChatRequest, Event, FlowRuntime, LLMBrickError, RuntimeObserver
from llmbrick.observe import StreamResult
from llmbrick.stream import FlowStream
from tests.support import TIMEOUT

#: The one API key the tests' ApiKeyAuth accepts, and the principal it names.
KEY = "k-telemetry-secret"
KEYS = [f"{KEY} name=alice"]
#: Prompt text that must never reach a metric, span or log line.
PROMPT = "my confidential prompt"


def chat(flow: str, text: str = PROMPT) -> dict[str, Any]:
    """A chat request for ``flow``."""
    return {"flow": flow, "messages": [{"role": "user", "content": text}]}


async def texts(request: ChatRequest) -> AsyncIterator[Event]:
    """Two text events, then done: three events in all."""
    yield {"type": "text", "text": "a"}
    yield {"type": "text", "text": "b"}


async def failing(request: ChatRequest) -> AsyncIterator[Event]:
    """One text event, then an expected error (UNAVAILABLE): two events."""
    yield {"type": "text", "text": "a"}
    raise LLMBrickError("upstream gone", code="UNAVAILABLE")


class Hold:
    """A flow that sends one event, then waits for ``release`` (or for its client to leave)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Register this one."""
        self.started.set()
        yield {"type": "text", "text": "started"}
        await self.release.wait()
        yield {"type": "text", "text": "released"}


class Ended(RuntimeObserver):
    """Counts streams the runtime ended, so a test can wait for the server's side of one.

    A client has the terminal event before the server's generator runs its
    ``finally`` (where the hooks fire), so tests wait here, not on the response.
    """

    def __init__(self, runtime: FlowRuntime) -> None:
        self.count = 0
        self.outcomes: list[str] = []
        self._changed = asyncio.Event()
        runtime.add_observer(self)

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        self.count += 1
        self.outcomes.append(result.outcome)
        self._changed.set()

    async def reach(self, count: int) -> None:
        """Wait until ``count`` streams have ended."""
        async with asyncio.timeout(TIMEOUT):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels, read by
    prometheus-client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, or ``None`` if the exposition has none."""
    return samples.get((name, frozenset(labels.items())))


def label_names(samples: Samples, name: str) -> set[frozenset[str]]:
    """The label-name sets the samples called ``name`` have."""
    return {frozenset(k for k, _ in labels) for sample, labels in samples if sample == name}
