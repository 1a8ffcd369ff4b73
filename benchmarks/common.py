"""What the orchestrator, the servers and the load client share.

Kept free of third-party imports: the upstream server runs this file's
neighbour ``upstream_server.py`` under another virtualenv, and every process
imports this module before anything heavy. The orchestrator pins every process
it starts (:func:`prepare_process` in the child before it runs anything), so
threads started later inherit the affinity; the stand-alone tools
(``ws_cost.py``, ``grpc_cost.py``, ``ws_storm.py``) pin themselves with the
same helper.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "API_KEY",
    "BURST",
    "CLIENT_CPU",
    "FAST",
    "IDLE",
    "MODES",
    "PACED",
    "READY",
    "ROOT",
    "SERVER_CPU",
    "BenchParams",
    "bench_params",
    "bench_schedule",
    "cpu_list",
    "cpu_seconds",
    "cpus_allowed",
    "percentile",
    "prepare_process",
    "process_tree",
    "rss_kb",
]

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
#: The line a server prints on stdout once it listens: ``READY <port>``.
READY = "READY"
#: The one key of the ``*-guarded`` servers' ``ApiKeyAuth``, which the load client sends as
#: ``Authorization: Bearer <key>`` to them (loopback only: not a secret).
API_KEY = "llmbrick-bench-key"

FAST = "fast"  # one loop turn (``await asyncio.sleep(0)``) between events, as the reference did
PACED = "paced"  # event k due at start + k * interval (a model's token pace)
IDLE = "idle"  # one event, then silence until the client leaves
BURST = "burst"  # ``burst`` events per loop turn (an upstream client parsing a network read)
MODES = (FAST, PACED, IDLE, BURST)

_TICK = os.sysconf("SC_CLK_TCK")


def prepare_process(cpus: int | Collection[int]) -> None:
    """Pin this process to ``cpus`` (those the machine has) and allow as many files as allowed.

    Call it first thing (the orchestrator calls it in the child before ``exec``):
    threads started afterwards (gRPC's, uvicorn's workers) inherit the affinity.
    """
    wanted = {cpus} if isinstance(cpus, int) else set(cpus)
    available = set(range(os.cpu_count() or 1))
    # Affinity is inherited (the orchestrator pins itself to the client's CPU), so ask for
    # the CPUs by number rather than checking the set this process started with.
    if hasattr(os, "sched_setaffinity") and wanted & available:
        try:
            os.sched_setaffinity(0, wanted & available)
        except OSError:
            pass  # a container that does not grant those CPUs: run unpinned
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cpu_list(cpus: Collection[int]) -> str:
    """``{0, 1, 3}`` as the kernel writes it in ``Cpus_allowed_list``: ``0-1,3``."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    first = 0
    while first < len(ordered):
        last = first
        while last + 1 < len(ordered) and ordered[last + 1] == ordered[last] + 1:
            last += 1
        low, high = ordered[first], ordered[last]
        ranges.append(str(low) if low == high else f"{low}-{high}")
        first = last + 1
    return ",".join(ranges)


class BenchParams(NamedTuple):
    """What a benchmark request asks the flow for."""

    events: int  # "text" events before the terminal one
    mode: str  # one of MODES
    interval: float  # paced: seconds between due times
    burst: int  # burst: events per loop turn


def bench_params(source: Mapping[str, Any] | None) -> BenchParams:
    """The parameters in a request's ``{"count", "mode", "interval", "burst"}`` object.

    Raises:
        ValueError: the object is missing or names an unknown mode.
    """
    if not source:
        raise ValueError("the request carries no benchmark parameters")
    mode = str(source.get("mode", FAST))
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    burst = int(source.get("burst") or 1)
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst}")
    return BenchParams(int(source["count"]), mode, float(source.get("interval") or 0.0), burst)


def bench_schedule(params: BenchParams, clock: Callable[[], float]) -> Iterator[float | None]:
    """For each event of the benchmark flow, what to await before yielding it.

    ``None``: yield at once, no await; a number: ``await asyncio.sleep(number)``
    first (0 is one loop turn). Every server's flow runs this one schedule, so the
    servers differ only in how they carry the events. Paced events are due on a
    fixed grid (event k at start + k * interval, start = the first event): a
    server that falls behind catches up instead of drifting, which is what the
    client's lateness figure assumes.
    """
    count, mode, interval, burst = params
    if count <= 0:
        return
    start = clock()
    yield None
    if mode == PACED:
        for number in range(1, count):
            yield max(0.0, start + number * interval - clock())
    elif mode == BURST:
        for number in range(1, count):
            yield 0.0 if number % burst == 0 else None
    else:  # fast, and idle's single event
        for _ in range(1, count):
            yield 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a server's worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a process that just ended
        parents.setdefault(parent, []).append(int(entry))
    found, index = [pid], 0
    while index < len(found):
        found.extend(parents.get(found[index], ()))
        index += 1
    return found


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time of a process (all its threads) and, with ``tree``, its children.

    From ``/proc/<pid>/stat``; a child that already ended is no longer counted, which is
    fine for servers whose workers live as long as they do.
    """
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{member}/stat", encoding="ascii", errors="replace") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / _TICK


def rss_kb(pid: int, tree: bool = True) -> int:
    """Resident memory in KiB (``VmRSS``) of a process and, with ``tree``, its children."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{member}/status", encoding="ascii", errors="replace") as file:
                for line in file:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except FileNotFoundError:
            pass
    return total


def cpus_allowed(pid: int, tree: bool = True) -> str:
    """The CPUs every thread of a process (and its children) may run on, e.g. ``"0"``."""
    lists = set()
    for member in process_tree(pid) if tree else [pid]:
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        lists.add(line.split(":", 1)[1].strip())
            except FileNotFoundError:
                continue  # a thread that just ended
    return ",".join(sorted(lists))


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
