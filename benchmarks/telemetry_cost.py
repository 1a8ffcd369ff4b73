"""CPU per event of the telemetry observers: ``FlowRuntime.run`` with and without them.

Usage::

    .venv/bin/python benchmarks/telemetry_cost.py              # about a minute and a half
    .venv/bin/python benchmarks/telemetry_cost.py --reps 60 --events 50000

In-process and transport-free, so the figures are the runtime's own cost and
what the observers add to it, nothing of an adapter or a socket (which add
several microseconds per event of their own, so the ratios here are the
worst case). Each run drives a flow through ``FlowRuntime.run`` and reads the
process CPU time (user + system, ``time.process_time``) around it; the figure
is CPU microseconds per delivered event. Configurations, each on a runtime of
its own:

- ``off``: no authenticator, no observer: the baseline.
- ``empty observer``: an observer overriding the stream and brick hooks with
  nothing: what the runtime's hook calls cost by themselves, whatever observes.
- ``auth``: ``ApiKeyAuth`` with one key, every request carrying it.
- ``metrics``: ``PrometheusObserver`` (a private registry).
- ``auth+metrics``: both: the budget is at most 1.05x ``off``.
- ``auth+metrics+tracing``: also ``TracingObserver`` on an SDK ``TracerProvider``
  without exporter (spans are built and ended, then dropped): for information.

Scenarios:

- ``one stream``: one stream of ``--events`` events per run: the per-event
  cost alone (the per-stream hooks are amortised to nothing).
- ``short streams``: ``--events`` events per run in streams of
  ``--per-stream`` events: per-event and per-stream costs (authentication,
  the hooks at start and end) together.
- ``pipeline``: a guard and ``EchoLLM`` streaming ``--per-stream`` chunks a
  stream, ``--pipeline-events`` per run (a pipeline event costs ten times a
  bare one): the brick hooks fire twice per stream.
- ``pipeline-item``: the same and a translator after the LLM, which runs once
  per chunk: here the brick hooks fire once per event.

The machine is shared, so runs are short and interleaved: every rep runs each
scenario's configurations back to back in a fresh (seeded) order, and the
table gives the median over reps of each rep's ratio to ``off``, the ratio of
the fastest runs (the least disturbed, the closest to the code's own cost when
other processes compete for the CPU), the median CPU per event and the extra
per stream. The process pins itself to
CPU 0 with the suite's ``prepare_process``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/telemetry_cost.py``
    sys.path[:0] = [str(ROOT), str(ROOT / "adapters"), str(ROOT / "plugins")]

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from benchmarks.common import SERVER_CPU, prepare_process  # noqa: E402
from llmbrick import (  # noqa: E402
    ApiKeyAuth,
    Event,
    FlowRegistry,
    FlowRuntime,
    Pipeline,
    RequestContext,
    RuntimeObserver,
    TranslateBrick,
    WireModel,
)
from llmbrick.bricks import EchoLLM, KeywordGuard, TextInput, TranslateRequest  # noqa: E402
from llmbrick.observe import StreamResult  # noqa: E402
from llmbrick.stream import FlowStream  # noqa: E402
from llmbrick_telemetry import PrometheusObserver, TracingObserver  # noqa: E402

__all__ = ["main"]

KEY = "bench-key"
CONFIGS = (
    "off",
    "empty observer",
    "auth",
    "metrics",
    "auth+metrics",
    "auth+metrics+tracing",
)
SCENARIOS = ("one stream", "short streams", "pipeline", "pipeline-item")
#: The budget: auth and metrics on may cost this much CPU per event over both off.
BUDGET = 1.05

Run = Callable[[FlowRuntime], Awaitable[int]]


class CountRequest(WireModel):
    """How many events the counting flow yields."""

    count: int


async def _count(request: CountRequest) -> AsyncIterator[Event]:
    event: Event = {"type": "text", "text": "tok ", "model": "bench"}
    for _ in range(request.count):
        yield event


class _Upper(TranslateBrick):
    """A translator that runs once per streamed chunk after the LLM brick."""

    async def handle(self, request: TranslateRequest) -> TextInput:
        return TextInput(text=request.text.upper())


class _Empty(RuntimeObserver):
    """Overrides the hooks the telemetry observers use, with nothing."""

    def stream_started(self, stream: FlowStream) -> None:
        pass

    def first_event(self, stream: FlowStream, seconds: float) -> None:
        pass

    def stream_ended(self, stream: FlowStream, result: StreamResult) -> None:
        pass

    def brick_ended(
        self, stream: FlowStream, brick: Any, token: Any, seconds: float, error: Any
    ) -> None:
        pass


def _runtime(config: str) -> FlowRuntime:
    registry = FlowRegistry()
    registry.register("count", _count, request_model=CountRequest)
    pipeline = (
        Pipeline()
        .add_brick(KeywordGuard(["bomb"], name="guard"))
        .add_brick(EchoLLM(name="llm"))
        .add_brick(_Upper(name="upper"))
    )
    registry.register("pipeline-item", pipeline)
    registry.register(
        "pipeline",
        Pipeline().add_brick(KeywordGuard(["bomb"], name="guard")).add_brick(EchoLLM(name="llm")),
    )
    options: dict[str, Any] = {}
    if "auth" in config:
        options["authenticator"] = ApiKeyAuth([KEY])
    runtime = FlowRuntime(registry, **options)
    if config == "empty observer":
        runtime.add_observer(_Empty())
    if "metrics" in config:
        PrometheusObserver(runtime=runtime, process_metrics=False)
    if "tracing" in config:
        TracingObserver(TracerProvider(), runtime=runtime)
    return runtime


async def _drain(runtime: FlowRuntime, flow: str, payload: dict[str, Any]) -> int:
    delivered = 0
    # What an adapter builds per request: a context with the key in the headers.
    context = RequestContext("bench", headers={"authorization": f"Bearer {KEY}"})
    async for _ in runtime.run(flow, payload, context=context):
        delivered += 1
    return delivered


def _scenario(name: str, events: int, per_stream: int) -> Run:
    """A coroutine function running ``name`` on a runtime; returns the events delivered."""
    if name == "one stream":
        return lambda runtime: _drain(runtime, "count", {"count": events - 1})
    streams = max(1, events // per_stream)
    if name == "short streams":
        payload: dict[str, Any] = {"count": per_stream - 1}  # and the terminal event
        flow = "count"
    else:
        words = " ".join(f"w{i}" for i in range(per_stream - 1))
        payload = {"messages": [{"role": "user", "content": words}]}
        flow = name

    async def run(runtime: FlowRuntime) -> int:
        delivered = 0
        for _ in range(streams):
            delivered += await _drain(runtime, flow, payload)
        return delivered

    return run


async def _measure(runtime: FlowRuntime, run: Run) -> float:
    """CPU microseconds per delivered event of one run."""
    gc.collect()
    started = time.process_time()
    delivered = await run(runtime)
    return (time.process_time() - started) / delivered * 1e6


async def _bench(options: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    runs = {
        name: _scenario(
            name,
            options.pipeline_events if name.startswith("pipeline") else options.events,
            options.per_stream,
        )
        for name in SCENARIOS
    }
    runtimes = {config: _runtime(config) for config in CONFIGS}
    for name in SCENARIOS:  # warm every path up (imports, caches, label children)
        for config in CONFIGS:
            await _measure(runtimes[config], runs[name])
    figures: dict[tuple[str, str], list[float]] = {}
    rng = random.Random(options.seed)
    scenarios = list(SCENARIOS)
    configs = list(CONFIGS)
    for rep in range(options.reps):
        # A scenario's configurations run back to back, in a new order each rep, so that
        # each rep's ratios compare runs made under the same conditions.
        rng.shuffle(scenarios)
        for name in scenarios:
            rng.shuffle(configs)
            for config in configs:
                figures.setdefault((name, config), []).append(
                    await _measure(runtimes[config], runs[name])
                )
        if (rep + 1) % 10 == 0:
            print(f"rep {rep + 1}/{options.reps}", file=sys.stderr, flush=True)
    return figures


def _table(figures: dict[tuple[str, str], list[float]], per_stream: int) -> list[str]:
    lines = [
        f"{'scenario':<14} {'config':<21} {'us/event':>9} {'ratio':>6} {'min ratio':>9} "
        f"{'+us/stream':>10}"
    ]
    for name in SCENARIOS:
        base = figures[name, "off"]
        for config in CONFIGS:
            values = figures[name, config]
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            # The fastest runs are the least disturbed by other processes on a shared machine.
            low = min(values) / min(base)
            extra = statistics.median(v - b for v, b in zip(values, base, strict=True))
            shown = f"{extra * per_stream:10.2f}" if name != "one stream" else f"{'-':>10}"
            flag = "  over budget" if config == "auth+metrics" and ratio > BUDGET else ""
            lines.append(
                f"{name:<14} {config:<21} {statistics.median(values):9.3f} {ratio:6.3f} "
                f"{low:9.3f} {shown}{flag}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument(
        "--per-stream", type=int, default=100, help="events per stream (short streams, pipeline)"
    )
    parser.add_argument("--pipeline-events", type=int, default=2_000, help="events per run")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="the order's seed (random)")
    options = parser.parse_args(argv)
    if options.seed is None:
        options.seed = random.randrange(1 << 30)
    prepare_process(SERVER_CPU)
    print(
        f"FlowRuntime.run in-process, pinned to CPU {SERVER_CPU}, process CPU time; "
        f"{options.reps} reps (seed {options.seed}) of {options.events} events per run "
        f"({options.pipeline_events} through the pipeline), {options.per_stream} events per "
        f"stream but in 'one stream'. us/event: median; ratio: median of each rep's ratio to "
        f"'off'; min ratio: fastest run to fastest 'off' run; +us/stream: median extra per "
        f"stream over 'off'",
        flush=True,
    )
    figures = asyncio.run(_bench(options))
    for line in _table(figures, options.per_stream):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
