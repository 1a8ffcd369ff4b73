"""What the orchestrator, the servers and the load client share.

Kept free of third-party imports: the upstream server runs this file's
neighbour ``upstream_server.py`` under another virtualenv, and every process
imports this module before anything heavy so that it can pin itself to its
CPU first (threads started later inherit the affinity).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_CPU",
    "FAST",
    "IDLE",
    "MODES",
    "PACED",
    "READY",
    "ROOT",
    "SERVER_CPU",
    "bench_params",
    "cpu_seconds",
    "cpus_allowed",
    "percentile",
    "prepare_process",
    "rss_kb",
]

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
#: The line a server prints on stdout once it listens: ``READY <port>``.
READY = "READY"

FAST = "fast"  # one loop turn (``await asyncio.sleep(0)``) between events, as the reference did
PACED = "paced"  # ``interval`` seconds between events (a model's token pace)
IDLE = "idle"  # one event, then silence until the client leaves
MODES = (FAST, PACED, IDLE)

_TICK = os.sysconf("SC_CLK_TCK")


def prepare_process(cpu: int) -> None:
    """Pin this process to ``cpu`` (when the machine has it) and allow as many files as allowed.

    Call it first thing: threads started afterwards (gRPC's) inherit the affinity.
    """
    # Affinity is inherited (the orchestrator pins itself to the client's CPU), so ask for
    # the CPU by number rather than checking the set this process started with.
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass  # a container that does not grant that CPU: run unpinned
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def bench_params(source: Mapping[str, Any] | None) -> tuple[int, str, float]:
    """``(count, mode, interval)`` from a request's ``{"count", "mode", "interval"}`` object.

    Raises:
        ValueError: the object is missing or names an unknown mode.
    """
    if not source:
        raise ValueError("the request carries no benchmark parameters")
    mode = str(source.get("mode", FAST))
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return int(source["count"]), mode, float(source.get("interval", 0.0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (stat fields 14, 15)


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB (``VmRSS``), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def cpus_allowed(pid: int) -> str:
    """The CPUs every thread of a process may run on (``Cpus_allowed_list`` of each task)."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
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
