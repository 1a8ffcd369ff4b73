"""The flows our servers run, as one registry: ``llmbrick serve benchmarks.app:registry``.

``benchmarks/servers.py`` serves this registry with ``SSEServer``, ``WebSocketServer``
and ``GrpcServer``; ``run.py`` serves it with the gateway command (``python -m
llmbrick_gateway serve benchmarks.app:registry``) for ``--workers N`` and for the
``abuse`` scenarios. Flows, each reading ``metadata.bench`` from a ``ChatRequest``:

- ``default``: the benchmark flow every server runs (``count`` events ``{"type": "text",
  "text": "tok"}`` on the schedule of ``mode``; see :func:`benchmarks.common.bench_schedule`).
- ``greedy``: ``count`` events yielded without ever awaiting, as a flow that parses a
  large buffer in one go would; it shows whether one stream can starve the event loop.
- ``big``: ``count`` events of 64 KiB text, one loop turn apart; against clients that never
  read, it shows whether the server buffers what it cannot send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.common import IDLE, bench_params, bench_schedule
from llmbrick import ChatRequest, FlowRegistry

__all__ = ["BIG_EVENT_BYTES", "build_registry", "registry"]

BIG_EVENT_BYTES = 64 << 10
_BIG_TEXT = "x" * BIG_EVENT_BYTES


def _count(request: ChatRequest) -> int:
    return int(((request.metadata or {}).get("bench") or {}).get("count", 0))


def build_registry() -> FlowRegistry:
    """A fresh registry with the three flows (a registry can back only one runtime)."""
    flows = FlowRegistry()

    @flows.flow("default")
    async def bench(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """The benchmark flow: ``count`` events on the schedule of ``mode``."""
        params = bench_params((request.metadata or {}).get("bench"))
        loop = asyncio.get_running_loop()
        for pause in bench_schedule(params, loop.time):
            if pause is not None:
                await asyncio.sleep(pause)
            yield {"type": "text", "text": "tok"}
        if params.mode == IDLE:
            await loop.create_future()  # until the client leaves

    @flows.flow("greedy")
    async def greedy(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """``count`` events and never an await: only the server can give the loop back."""
        for _ in range(_count(request)):
            yield {"type": "text", "text": "tok"}

    @flows.flow("big")
    async def big(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """``count`` events of 64 KiB, one loop turn apart."""
        for number in range(_count(request)):
            if number:
                await asyncio.sleep(0)
            yield {"type": "text", "text": _BIG_TEXT}

    return flows


registry = build_registry()
