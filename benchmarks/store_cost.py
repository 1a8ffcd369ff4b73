"""Server CPU per event of keeping every stream (memory store, Redis) against no store, interleaved.

The suite measures each server in a window of its own, one server after another. On a shared
machine the CPU one event costs drifts between such windows by more than a store adds (the same
server measured 21 and 34 µs per event in two reps of one run), so a ratio of two windows says
little about a 10% difference. Here the servers being compared run at once, each in its own
process pinned to CPU 0 (a server not being measured is idle), and one client on CPU 1
alternates between them: every round runs one stream (``fast``) or one window of paced streams
(``paced``) on each server, in an order reversed every round. A server's figure is the median
of its rounds; a ratio is the median of the ratios within each round, so a drift slower than
a round cancels out.

The servers are the suite's own (``benchmarks/servers.py``: ``sse``, ``sse-memstore``,
``sse-redis``, and the same for ``grpc``), on the suite's flow and clients; ``*-redis`` servers
store in a redis-server this tool starts (pinned with the servers), whose own CPU is reported
apart, as in the suite.

Usage: ``.venv/bin/python -m benchmarks.store_cost [--transports sse,grpc]
[--stores memstore,redis] [--events 30000] [--rounds 12] [--paced 500,1000] [--paced-rounds 4]
[--window 2] [--out FILE.json]``. 1,000 paced streams (20,000 events/s) are more than one core
of a small machine carries for any server: there a server is measured at full load, where it
handles more events per loop turn the further behind it falls, so 500 are measured too.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/store_cost.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clients import Counter, Stream
from benchmarks.common import (
    CLIENT_CPU,
    FAST,
    PACED,
    ROOT,
    SERVER_CPU,
    cpu_seconds,
    prepare_process,
)
from benchmarks.load import Opener
from benchmarks.redis_server import RedisProcess
from benchmarks.run import read_ready
from benchmarks.scenarios import Scenario

__all__ = ["main"]

_START_TIMEOUT = 60.0


def _start(name: str, redis: RedisProcess | None, log: Any) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, "-m", "benchmarks.servers", name]
    if name.endswith("-redis"):
        assert redis is not None
        command += ["--redis", redis.url]
    pin = functools.partial(prepare_process, {SERVER_CPU})
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, preexec_fn=pin
    )
    try:
        return process, read_ready(process, time.monotonic() + _START_TIMEOUT)
    except BaseException:
        process.kill()
        process.wait()
        raise


def _openers(transport: str, ports: dict[str, int], scenario: Scenario) -> dict[str, Opener]:
    return {
        name: Opener({"transport": transport, "dialect": "llmbrick", "port": port}, scenario)
        for name, port in ports.items()
    }


def _order(names: list[str], round_: int) -> list[str]:
    return names if round_ % 2 == 0 else names[::-1]


async def _fast(
    transport: str, ports: dict[str, int], pids: dict[str, int], events: int, rounds: int
) -> dict[str, list[float]]:
    """Per server, µs of server CPU per event of one fast stream, one figure per round."""
    scenario = Scenario("store-cost", "fast", "", streams=1, events=events)
    openers = _openers(transport, ports, scenario)
    names = list(ports)
    for name in names:  # warm up: imports, caches, the first connections
        for _ in range(4):
            await openers[name].open(Stream(Counter()), 500, FAST)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in _order(names, round_):
            stream = Stream(Counter())
            before = cpu_seconds(pids[name])
            await openers[name].open(stream, events, FAST)
            used = cpu_seconds(pids[name]) - before
            if not stream.ok or stream.events != events + 1:
                raise SystemExit(f"{name}: the stream failed ({stream.error or stream.events})")
            figures[name].append(used / stream.events * 1e6)
    return figures


async def _paced_window(
    opener: Opener, pid: int, streams: int, window: float, interval: float
) -> tuple[float, int]:
    """Open ``streams`` paced streams, measure ``window`` seconds of them: (µs/event, failed)."""
    counter = Counter()
    running = [Stream(counter, interval=interval) for _ in range(streams)]
    count = int(60 / interval)  # longer than the window: the streams are stopped after it
    tasks = [asyncio.create_task(opener.open(s, count, PACED)) for s in running]
    await asyncio.wait([s.first_seen for s in running], timeout=60)
    before, seen = cpu_seconds(pid), counter.events
    await asyncio.sleep(window)
    used, made = cpu_seconds(pid) - before, counter.events - seen
    failed = sum(task.done() or not s.events for s, task in zip(running, tasks, strict=True))
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    await asyncio.sleep(1.0)  # the server closes the streams before the next one is measured
    return (used / made * 1e6 if made else float("nan")), failed


async def _paced(
    transport: str,
    ports: dict[str, int],
    pids: dict[str, int],
    streams: int,
    rounds: int,
    window: float,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per server, µs of server CPU per event over a window of ``streams`` paced streams."""
    scenario = Scenario("store-cost-paced", "paced", "", streams=streams, streams_per_channel=100)
    openers = _openers(transport, ports, scenario)
    for opener in openers.values():
        # The window ends with the client stopping its streams. A kept stream's default
        # policy (grace) would run each flow on for 30 s, into that server's next window,
        # its CPU counted there against events no client reads; `cancel` stops it as no
        # store does, so a window measures the streams it reads.
        opener.headers["llmbrick-on-disconnect"] = "cancel"
    names = list(ports)
    figures: dict[str, list[float]] = {name: [] for name in names}
    failed = dict.fromkeys(names, 0)
    for round_ in range(rounds):
        for name in _order(names, round_):
            figure, lost = await _paced_window(
                openers[name], pids[name], streams, window, scenario.interval
            )
            figures[name].append(figure)
            failed[name] += lost
    return figures, failed


def _summary(figures: dict[str, list[float]], base: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, values in figures.items():
        entry: dict[str, Any] = {"us_per_event": statistics.median(values), "rounds": values}
        if name != base:
            ratios = sorted(v / b for v, b in zip(values, figures[base], strict=True))
            entry["ratio"] = statistics.median(ratios)
            quarter = len(ratios) // 4
            entry["ratio_iqr"] = (ratios[quarter], ratios[-1 - quarter])
        summary[name] = entry
    return summary


def _print(title: str, summary: dict[str, Any], base: str) -> None:
    print(f"\n{title}", flush=True)
    for name, entry in summary.items():
        line = f"  {name:16} {entry['us_per_event']:7.1f} µs/event"
        if name != base:
            low, high = entry["ratio_iqr"]
            line += (
                f"   vs {base}: {entry['ratio']:.3f}x (middle half of rounds {low:.2f}-{high:.2f})"
            )
        print(line, flush=True)


def _run_transport(
    transport: str, args: argparse.Namespace, redis: RedisProcess | None
) -> dict[str, Any]:
    names = [transport, *(f"{transport}-{store}" for store in args.stores)]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    with tempfile.TemporaryFile() as log:
        try:
            for name in names:
                processes[name], ports[name] = _start(name, redis, log)
            pids = {name: process.pid for name, process in processes.items()}
            loop_run = asyncio.run
            if transport == "sse":
                import uvloop

                loop_run = uvloop.run
            result: dict[str, Any] = {}
            redis_before = cpu_seconds(redis.pid) if redis is not None else 0.0
            fast = loop_run(_fast(transport, ports, pids, args.events, args.rounds))
            result["fast"] = _summary(fast, transport)
            _print(
                f"{transport}, one stream of {args.events:,} events, {args.rounds} rounds",
                result["fast"],
                transport,
            )
            for streams in args.paced:
                paced, failed = loop_run(
                    _paced(transport, ports, pids, streams, args.paced_rounds, args.window)
                )
                key = f"paced{streams}"
                result[key] = _summary(paced, transport)
                result[f"{key}_failed"] = failed
                _print(
                    f"{transport}, {streams:,} streams at 20 events/s, "
                    f"{args.window:g} s windows, {args.paced_rounds} rounds "
                    f"(streams that failed: {failed})",
                    result[key],
                    transport,
                )
            if redis is not None:
                result["redis_server_cpu_s"] = cpu_seconds(redis.pid) - redis_before
            return result
        finally:
            for process in processes.values():
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it (and write it as JSON with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="sse,grpc")
    parser.add_argument("--stores", default="memstore,redis")
    parser.add_argument("--events", type=int, default=30_000, help="events of each fast stream")
    parser.add_argument("--rounds", type=int, default=12, help="fast streams per server")
    parser.add_argument(
        "--paced", default="500,1000", help="paced streams per window, one section each ('': none)"
    )
    parser.add_argument("--paced-rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=2.0, help="seconds of a paced window")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.stores = [s for s in args.stores.split(",") if s]
    args.paced = [int(n) for n in args.paced.split(",") if n]
    unknown = set(args.stores) - {"memstore", "redis"}
    if unknown:
        parser.error(f"unknown stores {sorted(unknown)}; use memstore, redis")
    prepare_process({CLIENT_CPU})
    print(f"servers pinned to CPU {SERVER_CPU}, this client to CPU {CLIENT_CPU}")
    redis = RedisProcess({SERVER_CPU}) if "redis" in args.stores else None
    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        if redis is not None:
            redis.start()
        for transport in args.transports.split(","):
            results[transport] = _run_transport(transport, args, redis)
    finally:
        if redis is not None:
            redis.stop()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
