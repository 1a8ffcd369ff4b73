"""The load client: ``python -m benchmarks.load '<job JSON>'`` prints one result as JSON.

It runs in its own process, pinned to the other CPU than the server's, and reads
the server's CPU time and memory from ``/proc/<pid>`` at the edges of each
measured window. The job names the transport, the port and pid of a server that
is already listening, the request dialect and a :class:`~benchmarks.scenarios.Scenario`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from benchmarks.clients import (
    Counter,
    GrpcTarget,
    Stream,
    read_grpc,
    read_sse,
    read_ws,
    request_body,
    sse_request,
)
from benchmarks.common import (
    CLIENT_CPU,
    FAST,
    IDLE,
    PACED,
    cpu_seconds,
    cpus_allowed,
    percentile,
    prepare_process,
    rss_kb,
)
from benchmarks.scenarios import Scenario

__all__ = ["main", "run_job"]

_clock = time.perf_counter
_WARMUP_STREAMS = 4


class _Opener:
    """Starts streams of one transport against one server."""

    def __init__(self, job: dict[str, Any], scenario: Scenario) -> None:
        self.transport: str = job["transport"]
        self.dialect: str = job["dialect"]
        self.port: int = job["port"]
        self.interval = scenario.interval
        self._requests: dict[tuple[int, str], Any] = {}
        self.grpc: GrpcTarget | None = None
        if self.transport == "grpc":
            per = scenario.streams_per_channel
            total = scenario.streams + scenario.new_streams
            channels = 1 if per == 0 else -(-total // per)
            self.grpc = GrpcTarget(self.port, channels)

    def _request(self, count: int, mode: str) -> Any:
        key = (count, mode)
        request = self._requests.get(key)
        if request is None:
            body = request_body(self.dialect, count, mode, self.interval)
            if self.transport == "sse":
                request = sse_request(self.port, body)
            elif self.transport == "ws":
                request = orjson.dumps({"type": "start", "id": "1", "request": body}).decode()
            else:
                from llmbrick_grpc.codec import encode_request

                request = encode_request(body)
            self._requests[key] = request
        return request

    def open(self, stream: Stream, count: int, mode: str) -> Coroutine[Any, Any, None]:
        """A coroutine running one stream of ``count`` events in ``mode``."""
        request = self._request(count, mode)
        idle = mode == IDLE
        if self.transport == "sse":
            return read_sse(stream, self.port, request, idle)
        if self.transport == "ws":
            return read_ws(stream, f"ws://127.0.0.1:{self.port}/ws", request, idle)
        assert self.grpc is not None
        return read_grpc(stream, self.grpc.stub(), request, idle)


async def _run_all(
    streams: list[Stream], start: Callable[[Stream], Awaitable[None]], seconds: float, limit: int
) -> None:
    """Run every stream (``limit`` connecting at once when not 0); time out the stragglers."""
    gate = asyncio.Semaphore(limit) if limit else None

    async def one(stream: Stream) -> None:
        if gate is None:
            await start(stream)
            return
        async with gate:
            await start(stream)

    tasks = [asyncio.create_task(one(stream)) for stream in streams]
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for stream in streams:
        if not (stream.ok or stream.keep):
            stream.fail("timed out")


def _ttfe(streams: list[Stream]) -> dict[str, float | None]:
    values = [t * 1000 for s in streams if (t := s.ttfe) is not None]
    return {"ttfe_p50_ms": percentile(values, 0.5), "ttfe_p99_ms": percentile(values, 0.99)}


def _errors(streams: list[Stream]) -> dict[str, int]:
    reasons = collections.Counter(s.error[:120] for s in streams if s.error)
    return dict(reasons.most_common(3))


async def _warm_up(opener: _Opener, events: int) -> None:
    counter = Counter()
    streams = [Stream(counter) for _ in range(_WARMUP_STREAMS)]
    await _run_all(streams, lambda s: opener.open(s, events, FAST), 60.0, 0)


async def _fast(opener: _Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    await _warm_up(opener, min(scenario.events, 500))
    counter = Counter()
    streams = [Stream(counter) for _ in range(scenario.streams)]
    cpu, client, began = cpu_seconds(pid), time.process_time(), _clock()
    await _run_all(
        streams,
        lambda s: opener.open(s, scenario.events, FAST),
        scenario.timeout,
        scenario.connect_limit,
    )
    wall = _clock() - began
    cpu = cpu_seconds(pid) - cpu
    client = time.process_time() - client
    events = counter.events
    failed = sum(not s.ok or s.events != scenario.events + 1 for s in streams)
    return {
        "streams": scenario.streams,
        "events": events,
        "expected_events": scenario.streams * (scenario.events + 1),
        "wall_s": wall,
        "events_per_s": events / wall if wall else 0.0,
        "server_cpu_s": cpu,
        "cpu_us_per_event": cpu / events * 1e6 if events else None,
        "server_cpu_share": cpu / wall if wall else None,
        "client_cpu_share": client / wall if wall else None,
        "failed": failed,
        "errors": _errors(streams),
        "peak_rss_kb": rss_kb(pid),
        **_ttfe(streams),
    }


async def _idle(opener: _Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    await _warm_up(opener, 100)
    before = rss_kb(pid)
    counter = Counter()
    streams = [Stream(counter) for _ in range(scenario.streams)]
    began = _clock()
    await _run_all(
        streams, lambda s: opener.open(s, 1, IDLE), scenario.timeout, scenario.connect_limit
    )
    opened = _clock() - began
    await asyncio.sleep(scenario.settle_s)  # let the server finish what the last opens began
    after = rss_kb(pid)
    alive = sum(1 for s in streams if s.keep is not None and s.keep())
    return {
        "streams": scenario.streams,
        "open": alive,
        "failed": scenario.streams - alive,
        "errors": _errors(streams),
        "open_s": opened,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_stream": (after - before) / alive if alive else None,
        **_ttfe(streams),
    }


async def _paced(opener: _Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    await _warm_up(opener, 200)
    counter = Counter()
    running = [Stream(counter, record_gaps=True) for _ in range(scenario.streams)]
    count = scenario.background_events
    tasks = [asyncio.create_task(opener.open(s, count, PACED)) for s in running]
    began = _clock()
    await asyncio.wait([s.first_seen for s in running], timeout=scenario.timeout)
    ramp = _clock() - began
    counter.recording = True
    cpu, client, events, began = cpu_seconds(pid), time.process_time(), counter.events, _clock()
    await asyncio.sleep(scenario.measure_s)
    cpu = cpu_seconds(pid) - cpu
    client = time.process_time() - client
    window = _clock() - began
    events = counter.events - events
    fresh = [Stream(counter) for _ in range(scenario.new_streams)]
    opened = []
    pause = scenario.storm_s / max(1, scenario.new_streams)
    for stream in fresh:
        run = _run_all([stream], lambda s: opener.open(s, scenario.new_events, PACED), 60.0, 0)
        opened.append(asyncio.create_task(run))
        await asyncio.sleep(pause)
    await asyncio.wait(opened)
    counter.recording = False
    # The running streams would go on for a minute: any that ended by now broke.
    broken = [s for s, task in zip(running, tasks, strict=True) if task.done() or not s.events]
    for stream in broken:
        stream.fail(stream.error or "ended early")
    for task in tasks:
        task.cancel()
    gaps = [g * 1000 for g in counter.gaps]
    new_ttfe = _ttfe(fresh)
    return {
        "streams": scenario.streams,
        "ramp_s": ramp,
        "events_per_s": events / window if window else 0.0,
        "cpu_us_per_event": cpu / events * 1e6 if events else None,
        "server_cpu_share": cpu / window if window else None,
        "client_cpu_share": client / window if window else None,
        "failed": len(broken),
        "new_failed": sum(not s.ok or s.events != scenario.new_events + 1 for s in fresh),
        "errors": _errors(running + fresh),
        "gap_p50_ms": percentile(gaps, 0.5),
        "gap_p99_ms": percentile(gaps, 0.99),
        "gaps": len(gaps),
        "new_ttfe_p50_ms": new_ttfe["ttfe_p50_ms"],
        "new_ttfe_p99_ms": new_ttfe["ttfe_p99_ms"],
        **_ttfe(running),
    }


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario against one listening server and return its figures."""
    scenario = Scenario.from_json(job["scenario"])
    opener = _Opener(job, scenario)
    run = {"fast": _fast, "idle": _idle, "paced": _paced}[scenario.kind]
    result = await run(opener, scenario, job["pid"])
    # Recorded so that a run shows the two sides really ran on separate CPUs.
    result["server_cpus"] = cpus_allowed(job["pid"])
    result["client_cpus"] = cpus_allowed(os.getpid())
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the job given as the one argument and print its result as one JSON line."""
    prepare_process(CLIENT_CPU)
    job = orjson.loads((argv or sys.argv[1:])[0])
    if job["transport"] == "grpc":
        result = asyncio.run(run_job(job))  # grpc.aio wants the stock event loop
    else:
        import uvloop

        result = uvloop.run(run_job(job))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    # Idle connections and channels are still open: leave without tearing them down.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
