"""Soak test: paced streams over SSE, WebSocket and gRPC for minutes, clients coming and going.

``.venv/bin/python -m benchmarks.soak [--minutes 10] [--streams 1000] [--rate 20] ...``

Not part of the benchmark suite nor of CI: one command, one gateway, one long run.

1. One gateway process, ``python -m llmbrick_gateway serve benchmarks.soak_app:runtime
   --http-port 0 --grpc-port 0 --store memory?keep_for=120 --log-level warning``, pinned
   to CPU 0;
   this process (the load) pins itself to CPU 1 (``common.prepare_process``).
2. A few short streams of every kind on every transport warm the gateway up; once it
   is quiet, its tasks, fds and RSS are read: *idle before*.
3. ``--streams`` slots each run one paced stream after another (``--rate`` tokens/s,
   each ``--min-seconds`` to ``--max-seconds`` of tokens), a third of the slots on each
   transport, for ``--minutes``. Per transport, a tenth of the streams disconnect
   mid-stream (flow ``soak_cancel``, policy ``cancel``), a tenth drop their connection
   and resume (``soak_resume``, policy ``grace``), the rest read to ``done`` (see
   ``benchmarks/soak_streams.py``). Then no new stream starts and the running ones end.
4. Every ``--sample`` seconds: the gateway's RSS and fds from ``/proc/<pid>``, its tasks,
   running flows and kept streams from the app's ``stats`` flow, both sides' CPU and time
   spent waiting for a CPU, both event loops' lag, the events received and their lateness.
   *Warm-up* ends at the first sample after ``--warmup`` seconds at which every slot has
   started and the store is full: it has forgotten a finished stream, and a longest
   stream has gone by since (the store keeps each finished stream for ``--keep-for``
   seconds, 120, within a 256 MiB budget, so RSS grows until then by design); or at
   ``--warmup-max``.
5. Once the load has stopped, every client is closed and this process has collected its
   garbage (a closed gRPC channel keeps its connection until then), the gateway is waited
   for until no flow runs and its fds and tasks hold still: *idle after*, and the end's RSS.

Checks (the exit code is 1 if one fails):

- no failed stream: every stream did what its plan says (see ``soak_streams``);
- every disconnected flow cancelled: ``soak_cancel`` cancelled = disconnects, none done;
- no flow leaked: none running at the end, none of ``soak`` or ``soak_resume`` cancelled,
  their ``done`` counts equal to the streams read to the end, the runtime's only active
  stream the ``stats`` call itself;
- RSS at the end at most ``--rss-tolerance`` (5%) above RSS after warm-up, the median of
  the first samples after it (``--no-rss-check`` skips the check, e.g. for runs too short
  to warm the store; the report then says it was not applied);
- fds and tasks idle after = idle before (within 2); under load, the first minute after
  warm-up against the last minute before the end (medians of up to 6 samples each, so a
  stall of one sample does not count): the gateway's fds minus this process's (each
  connection is one fd on either side) within max(16, 2%), and the gateway's tasks per
  stream held open, times the streams, within max(16, 2%) of the tasks.

The report is printed and written as JSON to ``benchmarks/results/soak.json`` for a run of
at least the requirement (10 minutes, 1,000 streams, 20 tokens/s), else to
``benchmarks/results/raw/soak.json``; ``--out`` picks another path. The gateway's stderr
goes to ``benchmarks/results/raw/soak-gateway.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as ``python benchmarks/soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.common import (
    CLIENT_CPU,
    ROOT,
    SERVER_CPU,
    cpu_seconds,
    cpus_allowed,
    prepare_process,
    rss_kb,
)

if TYPE_CHECKING:  # imported after pinning (see main): grpc may start threads
    from benchmarks.soak_streams import Clients, Plan, Tally
    from llmbrick_sse import SSEClient

__all__ = ["Check", "Sample", "main", "parse_args"]

RESULTS = ROOT / "benchmarks" / "results"
_RAW = RESULTS / "raw"
_TARGET = "benchmarks.soak_app:runtime"
#: The requirement; a run of at least this writes the committed ``results/soak.json``.
_FULL = {"minutes": 10.0, "streams": 1000, "rate": 20.0}
_START_TIMEOUT = 60.0
_HELLO = [{"role": "user", "content": "stats"}]
#: A disconnecting stream's flow is asked for this many times the events its client reads.
_RUN_ON = 10


@dataclass(slots=True)
class Sample:
    """One reading of both sides, ``t`` seconds into the load."""

    t: float
    phase: str  # ramp, warm-up, load, drain, idle-before, idle-after
    streams: int  # streams this process has running
    running: int  # soak flows running in the gateway (started minus ended)
    active: int  # the runtime's active streams (the stats call included)
    tasks: int  # asyncio tasks in the gateway
    fds: int  # the gateway's open fds, from /proc/<pid>/fd
    fds_reported: int  # the same, as the gateway counted them
    driver_fds: int  # this process's open fds
    rss_kb: int  # the gateway's VmRSS, from /proc/<pid>/status
    rss_reported_kb: int  # the same, as the gateway read it
    kept_streams: int  # streams the gateway's store keeps
    kept_mb: float  # what the store estimates they take
    server_cpu: float = 0.0  # CPU seconds per second since the previous sample
    driver_cpu: float = 0.0
    events_per_s: float = 0.0
    lateness_p50_ms: int | None = None  # of the events since the previous sample
    lateness_p99_ms: int | None = None
    lateness_max_ms: int | None = None
    gateway_lag_ms: float = 0.0  # the gateway's event loop: worst wake-up delay in the window
    driver_lag_ms: float = 0.0  # this process's
    # Seconds per second the main thread (the event loop's) waited for a CPU while runnable
    # (``/proc/<pid>/schedstat``): other processes on its CPU, on a shared machine.
    gateway_cpu_wait: float = 0.0
    driver_cpu_wait: float = 0.0
    gateway_gc_max_ms: float = 0.0  # the gateway's longest garbage-collector pause
    gateway_gc: float = 0.0  # its seconds of garbage collection per second
    failed: int = 0  # failed streams so far


@dataclass(slots=True)
class Check:
    """One pass/fail judgement; ``applied`` False when the run could not make it."""

    name: str
    applied: bool
    passed: bool
    detail: str


@dataclass(slots=True)
class _Totals:
    """Streams by transport and kind: started, good, failed; and why the first ones failed."""

    started: Counter[str] = field(default_factory=Counter)
    good: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    first_failures: list[str] = field(default_factory=list)
    resumed_on: Counter[str] = field(default_factory=Counter)

    def count(self, counter: Counter[str], kind: str | None = None) -> int:
        return sum(n for key, n in counter.items() if kind is None or key.endswith(f"/{kind}"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Soak test: paced streams over SSE, WebSocket and gRPC against one "
        "gateway, clients coming and going; checks failures, cancels, RSS, fds and tasks.",
    )
    add = parser.add_argument
    add("--minutes", type=float, default=_FULL["minutes"], help="load time (default 10)")
    add("--streams", type=int, default=_FULL["streams"], help="streams at once (default 1000)")
    add("--rate", type=float, default=_FULL["rate"], help="tokens/s per stream (default 20)")
    add("--min-seconds", type=float, default=20.0, help="shortest stream, in seconds of tokens")
    add("--max-seconds", type=float, default=60.0, help="longest stream, in seconds of tokens")
    add("--ramp", type=float, default=10.0, help="seconds over which the slots start")
    add("--sample", type=float, default=10.0, help="seconds between samples")
    add(
        "--warmup",
        type=float,
        help="warm-up at least (s; default: 60, at most a third of the load)",
    )
    add("--warmup-max", type=float, help="warm-up at most (s; default: 3/4 of the load time)")
    add("--keep-for", type=float, default=120.0, help="seconds the store keeps a finished stream")
    add("--resume-pause", type=float, default=2.0, help="longest pause before a resume (s)")
    add("--rss-tolerance", type=float, default=0.05, help="RSS growth allowed (default 0.05)")
    add("--no-rss-check", action="store_true", help="do not judge RSS (reported as not applied)")
    add("--quiesce", type=float, default=60.0, help="seconds to wait for an idle gateway")
    add("--sse-per-client", type=int, default=50, help="streams at once per SSEClient")
    add("--ws-per-connection", type=int, default=10, help="streams at once per WebSocket")
    add("--grpc-per-channel", type=int, default=100, help="streams at once per gRPC channel")
    add("--retire-after", type=int, default=200, help="streams a pooled client carries")
    add("--transports", default="sse,ws,grpc", help="which to use (default: all three)")
    add("--seed", type=int, help="random seed (default: random, printed)")
    add("--out", type=Path, help="where the JSON goes (default: see the module docstring)")
    add("--gateway-log", type=Path, default=_RAW / "soak-gateway.log", help="its stderr")
    add("--quiet", action="store_true", help="no line per sample")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.streams < 3 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive, --streams at least 3")
    if not 0 < args.min_seconds <= args.max_seconds:
        parser.error("need 0 < --min-seconds <= --max-seconds")
    if args.min_seconds * args.rate < 4:
        parser.error("a stream needs at least 4 tokens: raise --min-seconds or --rate")
    if args.keep_for <= 0:
        parser.error("--keep-for must be positive")
    if args.sample <= 0 or args.ramp < 0 or args.resume_pause < 0:
        parser.error("--sample must be positive, --ramp and --resume-pause not negative")
    chosen = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not chosen or not set(chosen) <= {"sse", "ws", "grpc"}:
        parser.error("--transports takes sse, ws and grpc, separated by commas")
    args.transports = ",".join(chosen)
    if args.warmup is None:
        args.warmup = min(60.0, args.minutes * 20.0)
    if args.warmup_max is None:
        args.warmup_max = max(args.warmup, args.minutes * 45.0)
    return args


class _Gateway:
    """The gateway process: started pinned to the server's CPU, its URLs read from stdout."""

    def __init__(self, log: Path, keep_for: float) -> None:
        self.log = log
        self.keep_for = keep_for
        self.process: asyncio.subprocess.Process | None = None
        self.urls: dict[str, str] = {}
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http(self) -> str:
        return self.urls["health"].removesuffix("/healthz")

    @property
    def grpc(self) -> str:
        return self.urls["gRPC"].split("://", 1)[1]

    def ports(self) -> dict[int, str]:
        """The gateway's ports and what each serves."""
        return {
            int(self.http.rsplit(":", 1)[1]): "http",
            int(self.grpc.rsplit(":", 1)[1]): "grpc",
        }

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "llmbrick_gateway", "serve", _TARGET),
                *("--http-port", "0", "--grpc-port", "0"),
                *("--store", f"memory?keep_for={self.keep_for:g}"),
                *("--log-level", "warning"),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                preexec_fn=_gateway_child,
            )
        stdout = self.process.stdout
        assert stdout is not None
        async with asyncio.timeout(_START_TIMEOUT):
            while True:
                line = (await stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"the gateway exited before it was ready; see {self.log}")
                if line.startswith("Press Ctrl+C"):
                    break
                parts = line.split()
                if len(parts) == 2:
                    self.urls[parts[0]] = parts[1]
        self._drain = asyncio.create_task(self._read_rest(stdout))

    @staticmethod
    async def _read_rest(stdout: asyncio.StreamReader) -> None:
        while await stdout.read(1 << 16):
            pass

    async def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            await self._drain
        return process.returncode


def _gateway_child() -> None:
    """In the gateway's process before it runs: pinned, and ended if this process dies."""
    prepare_process(SERVER_CPU)
    try:  # PR_SET_PDEATHSIG: no gateway left behind by a killed soak
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _fd_count(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def fd_kinds(pid: int | str, ports: dict[int, str] | None = None) -> dict[str, int]:
    """What a process's fds are, counted: ``tcp ESTABLISHED``, ``pipe``, ``anon_inode:[eventfd]``...

    For a gateway that ends with more fds than it started with, this says what they are;
    a TCP socket on one of ``ports`` (port: name) is named after it (``tcp http ...``).
    """
    sockets: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            where = (ports or {}).get(port)
            state = _TCP_STATES.get(fields[3], fields[3])
            sockets[fields[9]] = f"tcp {where} {state}" if where else f"tcp {state}"
    kinds: Counter[str] = Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            kinds[sockets.get(target[8:-1], "socket (not tcp)")] += 1
        elif target.startswith("pipe:["):
            kinds["pipe"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds[target] += 1
    return dict(sorted(kinds.items()))


def _cpu_wait(pid: int | str) -> float:
    """Seconds the process's main thread has waited on a run queue (``/proc/<pid>/schedstat``)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _median(values: list[float] | list[int]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def _percentile_ms(histogram: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of a 1 ms histogram (``None`` when it is empty)."""
    total = sum(histogram)
    if not total:
        return None
    rank = max(1, -(-int(fraction * total * 1000) // 1000))
    seen = 0
    for ms, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return ms
    return len(histogram) - 1


def _max_ms(histogram: list[int]) -> int | None:
    for ms in range(len(histogram) - 1, -1, -1):
        if histogram[ms]:
            return ms
    return None


class Soak:
    """One soak run (see the module docstring); :meth:`run` returns the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        from benchmarks.soak_app import LoopLag
        from benchmarks.soak_streams import TRANSPORTS, Tally

        self.args = args
        self.lag = LoopLag()
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.gateway = _Gateway(args.gateway_log, args.keep_for)
        self.tally: Tally = Tally()
        self.totals = _Totals()
        self.samples: list[Sample] = []
        self.transports: tuple[str, ...] = tuple(
            t for t in TRANSPORTS if t in args.transports.split(",")
        )
        self.serials = dict.fromkeys(TRANSPORTS, 0)
        self.resumes = dict.fromkeys(TRANSPORTS, 0)
        self.streams = 0  # running now
        self.slots_started = 0
        self.stopping = False
        self.stats_calls = 0
        self._stats: SSEClient | None = None
        self._clock = time.monotonic
        self._began = 0.0
        self._last: tuple[float, float, float, int, list[int], tuple[float, float]] | None = None
        self.phase = "ramp"
        self._collected = 0.0  # the gateway's seconds of garbage collection at the last sample
        self.warm: Sample | None = None
        self.warm_reason = ""
        self.last_load: Sample | None = None
        #: The warm-up sample and every one after it until the load stops.
        self.load_samples: list[Sample] = []
        self.store_full_at: float | None = None  # when the store first forgot a stream
        self.lingering: dict[str, int] = {}  # gateway fds closed by the load's gc at the end

    # -- the plan of each stream ----------------------------------------------------------

    def plan(self, transport: str) -> Plan:
        """The next stream on ``transport``: a tenth disconnect, a tenth resume."""
        from benchmarks.soak_streams import DISCONNECT, NORMAL, RESUME, Plan

        args, rng = self.args, self.rng
        number = self.serials[transport]
        self.serials[transport] = number + 1
        kind = {3: DISCONNECT, 7: RESUME}.get(number % 10, NORMAL)
        count = max(4, round(rng.uniform(args.min_seconds, args.max_seconds) * args.rate))
        cut = 0
        if kind == RESUME:
            cut = rng.randint(1, count // 2)
        elif kind == DISCONNECT:
            # The client leaves somewhere in its stream, and the flow is asked for far more
            # events than that: however late the client reads (a loaded machine), the flow
            # is still running when it leaves, so only a cancel can end it soon.
            cut = rng.randint(1, count)
            count *= _RUN_ON
        resume_on = ""
        if kind == RESUME:  # each transport's resumes go over each transport in turn
            turn = self.resumes[transport]
            self.resumes[transport] = turn + 1
            index = self.transports.index(transport)
            resume_on = self.transports[(index + turn) % len(self.transports)]
        own = transport == "ws" and (kind != NORMAL or number % 5 == 0)
        return Plan(
            serial=number,
            transport=transport,
            kind=kind,
            count=count,
            interval=1.0 / args.rate,
            cut=cut,
            resume_on=resume_on,
            pause=rng.uniform(0.0, args.resume_pause) if kind == RESUME else 0.0,
            own_connection=own,
        )

    async def _slot(self, clients: Clients, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        self.slots_started += 1
        transport = self.transports[index % len(self.transports)]
        while not self.stopping:
            plan = self.plan(transport)
            await self._one(clients, plan)

    async def _one(self, clients: Clients, plan: Plan) -> bool:
        from benchmarks.soak_streams import RESUME

        key = f"{plan.transport}/{plan.kind}"
        totals = self.totals
        totals.started[key] += 1
        self.streams += 1
        limit = plan.count / self.args.rate + plan.pause + 120.0
        try:
            async with asyncio.timeout(limit):
                await clients.run(plan)
        except Exception as exc:  # any way a stream breaks is a failed stream, reported
            if isinstance(exc, TimeoutError):
                reason = f"no end within {limit:.0f} s"
            else:
                reason = f"{type(exc).__name__}: {exc}"[:300]
            totals.failed[key] += 1
            totals.reasons[reason.split(":", 1)[0] if ":" in reason else reason] += 1
            if len(totals.first_failures) < 10:
                totals.first_failures.append(f"{key} #{plan.serial} {plan}: {reason}")
            return False
        else:
            totals.good[key] += 1
            if plan.kind == RESUME:
                totals.resumed_on[f"{plan.transport}->{plan.resume_on}"] += 1
            return True
        finally:
            self.streams -= 1

    # -- readings ---------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """The app's ``stats`` flow, over SSE."""
        from benchmarks.soak_app import STATS

        assert self._stats is not None
        self.stats_calls += 1
        result = await self._stats.invoke(STATS, {"messages": _HELLO})
        if result["error"] is not None:
            raise RuntimeError(f"the stats flow failed: {result['error']}")
        data: dict[str, Any] = result["events"][0]["data"]
        return data

    async def sample(self, phase: str) -> tuple[Sample, dict[str, Any]]:
        """Read both sides now; rates are since the previous sample."""
        pid = self.gateway.pid
        info = await self.stats()
        now = self._clock()
        server_cpu = cpu_seconds(pid, tree=False)
        driver_cpu = cpu_seconds(os.getpid(), tree=False)
        waits = (_cpu_wait(pid), _cpu_wait("self"))
        collected = sum(info["gc"]["seconds"])
        running = sum(
            flow["started"] - flow["done"] - flow["cancelled"] - flow["failed"]
            for flow in info["flows"].values()
        )
        sample = Sample(
            t=round(now - self._began, 1) if self._began else 0.0,
            phase=phase,
            streams=self.streams,
            running=running,
            active=info["active_streams"],
            tasks=info["tasks"],
            fds=_fd_count(pid),
            fds_reported=info["fds"],
            driver_fds=_fd_count("self"),
            rss_kb=rss_kb(pid, tree=False),
            rss_reported_kb=info["rss_kb"],
            kept_streams=info["kept_streams"],
            kept_mb=round(info["kept_bytes"] / 1e6, 1),
            gateway_lag_ms=info["loop_lag_ms"],
            gateway_gc_max_ms=info["gc"]["pause_max_ms"],
            driver_lag_ms=round(self.lag.read() * 1000, 1),
            failed=self.totals.count(self.totals.failed),
        )
        lateness = list(self.tally.lateness)
        if self._last is not None:
            then, server_then, driver_then, events_then, lateness_then, waits_then = self._last
            wall = max(now - then, 1e-9)
            sample.gateway_gc = round((collected - self._collected) / wall, 3)
            sample.gateway_cpu_wait = round((waits[0] - waits_then[0]) / wall, 3)
            sample.driver_cpu_wait = round((waits[1] - waits_then[1]) / wall, 3)
            sample.server_cpu = round((server_cpu - server_then) / wall, 3)
            sample.driver_cpu = round((driver_cpu - driver_then) / wall, 3)
            sample.events_per_s = round((self.tally.events - events_then) / wall, 1)
            window = [a - b for a, b in zip(lateness, lateness_then, strict=True)]
            sample.lateness_p50_ms = _percentile_ms(window, 0.5)
            sample.lateness_p99_ms = _percentile_ms(window, 0.99)
            sample.lateness_max_ms = _max_ms(window)
        self._last = (now, server_cpu, driver_cpu, self.tally.events, lateness, waits)
        self._collected = collected
        self.samples.append(sample)
        if not self.args.quiet:
            self._print_sample(sample)
        return sample, info

    @staticmethod
    def _print_sample(s: Sample) -> None:
        late = "-" if s.lateness_p99_ms is None else f"{s.lateness_p50_ms}/{s.lateness_p99_ms}"
        print(
            f"{s.t:7.1f}s {s.phase:<11} streams {s.streams:5d} running {s.running:5d} "
            f"ev/s {s.events_per_s:8.0f} late p50/p99 {late:>9} ms cpu srv {s.server_cpu:.2f} "
            f"drv {s.driver_cpu:.2f} | rss {s.rss_kb / 1024:7.1f} MB fds {s.fds:5d} "
            f"tasks {s.tasks:5d} kept {s.kept_streams:5d} ({s.kept_mb:.0f} MB) "
            f"lag {s.gateway_lag_ms:.0f}/{s.driver_lag_ms:.0f} ms gc {s.gateway_gc_max_ms:.0f} ms "
            f"wait {s.gateway_cpu_wait:.2f}/{s.driver_cpu_wait:.2f} failed {s.failed}",
            flush=True,
        )

    async def quiet(self, phase: str) -> tuple[Sample, dict[str, Any], bool]:
        """Wait (up to ``--quiesce`` s) until no flow runs and fds and tasks hold still
        (the same for 5 readings 0.25 s apart); then a sample, with the fds described."""
        deadline = self._clock() + self.args.quiesce
        previous: tuple[int, int] | None = None
        steady = 0
        while True:
            await asyncio.sleep(0.25)
            info = await self.stats()
            pid = self.gateway.pid
            running = sum(
                flow["started"] - flow["done"] - flow["cancelled"] - flow["failed"]
                for flow in info["flows"].values()
            )
            now = (_fd_count(pid), info["tasks"])
            idle = running == 0 and info["active_streams"] == 1
            steady = steady + 1 if idle and now == previous else 0
            previous = now
            if steady >= 4 or self._clock() > deadline:
                break
        sample, info = await self.sample(phase)
        info["fd_kinds"] = fd_kinds(self.gateway.pid, self.gateway.ports())
        return sample, info, steady >= 4

    def _warm_done(self, sample: Sample, info: dict[str, Any]) -> str:
        """Why warm-up ends at ``sample`` ('' while it goes on)."""
        args = self.args
        if sample.t < args.warmup or self.slots_started < args.streams:
            return ""
        ever = sum(flow["started"] for flow in info["flows"].values()) + self.stats_calls
        if self.store_full_at is None and sample.kept_streams < ever:
            self.store_full_at = sample.t
        if self.store_full_at is not None and sample.t >= self.store_full_at + args.max_seconds:
            return (
                f"the store is full: it first forgot finished streams at "
                f"t={self.store_full_at:g} s, and a longest stream has gone by since"
            )
        if sample.t >= args.warmup_max:
            return f"--warmup-max ({args.warmup_max:g} s) reached; the store was still filling"
        return ""

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Start the gateway, warm it, load it, let it go quiet, judge; the report."""
        from benchmarks.soak_streams import Clients
        from llmbrick_sse import SSEClient

        args = self.args
        load_before = os.getloadavg()
        started_at = time.time()
        await self.gateway.start()
        try:
            self._stats = SSEClient(self.gateway.http, timeout=60.0)
            info = await self.stats()
            if info["kept_streams"] is None:
                raise RuntimeError("the gateway keeps no streams: it needs --store memory")
            await self._warm_up_transports()
            lingering_before = await self._collect()
            idle_before, base, settled_before = await self.quiet("idle-before")
            self._began = self._clock()
            self._last = None
            clients = Clients(
                self.gateway.http,
                self.gateway.grpc,
                self.tally,
                sse_per_client=args.sse_per_client,
                ws_per_connection=args.ws_per_connection,
                grpc_per_channel=args.grpc_per_channel,
                retire_after=args.retire_after,
            )
            await self._load(clients)
            await clients.aclose()
            lingering_after = self.lingering = await self._collect()
            pools = {
                name: {"opened": pool.opened, "closed": pool.closed, "most_open": pool.most}
                for name, pool in clients.pools().items()
            }
            pools["ws-own"] = {"opened": clients.ws_own, "closed": clients.ws_own}
            idle_after, final, settled_after = await self.quiet("idle-after")
            pinning = {
                "gateway": cpus_allowed(self.gateway.pid, tree=False),
                "load": cpus_allowed(os.getpid(), tree=False),
            }
            await self._stats.aclose()
        finally:
            code = await self.gateway.stop()
        flows = {
            name: {key: final["flows"][name][key] - base["flows"][name][key] for key in counts}
            for name, counts in final["flows"].items()
        }
        checks = self._checks(idle_before, idle_after, final, flows, settled_after)
        return {
            "meta": {
                "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.soak"]),
                "argv": sys.argv[1:],
                "options": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "seed": self.seed,
                "requirement_load": _full_load(args) and args.minutes >= _FULL["minutes"],
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at)),
                "seconds": round(time.time() - started_at, 1),
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "pinning": pinning,
                "pinned_as_intended": pinning
                == {"gateway": str(SERVER_CPU), "load": str(CLIENT_CPU)},
                "gateway_exit": code,
                "gateway_log": str(self.gateway.log),
            },
            "warm_up": {
                "ended_at_s": self.warm.t if self.warm else None,
                "why": self.warm_reason or "never ended (the load was too short)",
            },
            "idle_before": asdict(idle_before)
            | {
                "settled": settled_before,
                "fd_kinds": base["fd_kinds"],
                "closed_by_load_gc": lingering_before,
            },
            "warm": asdict(self.warm) if self.warm else None,
            "last_under_load": asdict(self.last_load) if self.last_load else None,
            "idle_after": asdict(idle_after)
            | {
                "settled": settled_after,
                "fd_kinds": final["fd_kinds"],
                "closed_by_load_gc": lingering_after,
            },
            "streams": self._streams_report(),
            "server_flows": flows,
            "clients": pools,
            "load": self._load_report(),
            "checks": [asdict(check) for check in checks],
            "passed": all(check.passed for check in checks if check.applied),
            "samples": [asdict(sample) for sample in self.samples],
        }

    async def _collect(self) -> dict[str, int]:
        """Collect this process's garbage once its clients are closed; what that closed.

        A closed ``grpc.aio`` channel keeps its TCP connection until the channel object
        is garbage-collected (it sits in reference cycles), so without this the gateway's
        idle fds would count connections this process still holds. Returns the gateway's
        fds, by kind, that went away with the collection (after half a second for the
        gateway to see the connections close).
        """
        await asyncio.sleep(0.5)
        ports = self.gateway.ports()
        before = Counter(fd_kinds(self.gateway.pid, ports))
        gc.collect()
        await asyncio.sleep(0.5)
        gone = before - Counter(fd_kinds(self.gateway.pid, ports))
        return dict(gone)

    async def _warm_up_transports(self) -> None:
        """One short stream of every kind on every transport, so that idle-before is warm."""
        from benchmarks.soak_streams import KINDS, Clients, Plan, Tally

        clients = Clients(self.gateway.http, self.gateway.grpc, Tally())
        try:
            plans = [
                Plan(
                    serial=-1,
                    transport=transport,
                    kind=kind,
                    count=8,
                    interval=0.02,
                    cut=2 if kind != "normal" else 0,
                    resume_on=self.transports[(index + 1) % len(self.transports)],
                    own_connection=transport == "ws" and kind != "normal",
                )
                for index, transport in enumerate(self.transports)
                for kind in KINDS
            ]
            await asyncio.gather(*(clients.run(plan) for plan in plans))
        finally:
            await clients.aclose()

    async def _load(self, clients: Clients) -> None:
        """Run the slots for ``--minutes``, sampling; then let every stream end (the drain)."""
        args = self.args
        slots = [
            asyncio.create_task(self._slot(clients, index, args.ramp * index / args.streams))
            for index in range(args.streams)
        ]
        deadline = self._began + args.minutes * 60.0
        next_sample = self._began + args.sample
        drain_deadline = float("inf")
        while True:
            pending = [slot for slot in slots if not slot.done()]
            if not pending:
                break
            now = self._clock()
            wake = next_sample if self.stopping else min(next_sample, deadline)
            if wake > now:
                await asyncio.wait(pending, timeout=wake - now)
            now = self._clock()
            if not self.stopping and now >= deadline:
                self.stopping = True
                self.phase = "drain"
                drain_deadline = now + args.max_seconds + args.resume_pause + 180.0
            if now >= next_sample:
                while next_sample <= now:
                    next_sample += args.sample
                await self._sample_load()
            if self._clock() > drain_deadline:
                for slot in slots:
                    slot.cancel()
                break
        results = await asyncio.gather(*slots, return_exceptions=True)
        stuck = sum(isinstance(result, BaseException) for result in results)
        if stuck:
            self.totals.failed["drain/stuck"] += stuck
            self.totals.first_failures.append(f"{stuck} streams still running after the drain")
        if self.last_load is None:
            self.last_load = self.warm

    async def _sample_load(self) -> None:
        """A sample during the load; it may end the warm-up."""
        sample, info = await self.sample(self.phase)
        if self.phase == "ramp" and self.slots_started >= self.args.streams:
            self.phase = "warm-up"
        if self.phase == "warm-up":
            why = self._warm_done(sample, info)
            if why:
                self.warm, self.warm_reason = sample, why
                self.phase = "load"
        if self.warm is not None and not self.stopping:
            self.last_load = sample
            self.load_samples.append(sample)

    # -- judging ----------------------------------------------------------------------------

    def _checks(
        self,
        before: Sample,
        after: Sample,
        final: dict[str, Any],
        flows: dict[str, dict[str, int]],
        settled: bool,
    ) -> list[Check]:
        from benchmarks.soak_streams import DISCONNECT, NORMAL, RESUME

        args, totals = self.args, self.totals
        checks: list[Check] = []
        failed = totals.count(totals.failed)
        started = totals.count(totals.started)
        reasons = "; ".join(f"{n} x {why}" for why, n in totals.reasons.most_common(5))
        checks.append(
            Check(
                "no failed stream",
                True,
                failed == 0,
                f"{failed} of {started} streams failed" + (f" ({reasons})" if reasons else ""),
            )
        )
        disconnects = totals.count(totals.good, DISCONNECT)
        cancel = flows["soak_cancel"]
        checks.append(
            Check(
                "every disconnected flow cancelled",
                True,
                cancel["cancelled"] == disconnects and cancel["done"] == 0,
                f"{disconnects} clients disconnected; soak_cancel: {cancel['started']} started, "
                f"{cancel['cancelled']} cancelled, {cancel['done']} done, "
                f"{cancel['failed']} failed",
            )
        )
        running = {
            name: f["started"] - f["done"] - f["cancelled"] - f["failed"]
            for name, f in flows.items()
        }
        normal, resumed = flows["soak"], flows["soak_resume"]
        good_normal = totals.count(totals.good, NORMAL)
        good_resumed = totals.count(totals.good, RESUME)
        leak_ok = (
            not any(running.values())
            and final["active_streams"] == 1
            and normal["cancelled"] == normal["failed"] == 0
            and resumed["cancelled"] == resumed["failed"] == 0
            and normal["done"] == good_normal
            and resumed["done"] == good_resumed
        )
        checks.append(
            Check(
                "no flow leaked",
                True,
                leak_ok,
                f"running at the end {running}, runtime active streams "
                f"{final['active_streams']} (the stats call); soak: {normal['done']} done of "
                f"{good_normal} read to the end, {normal['cancelled']} cancelled; soak_resume: "
                f"{resumed['done']} done of {good_resumed} resumed, {resumed['cancelled']} "
                f"cancelled; gateway quiet in time: {settled}",
            )
        )
        attempted = totals.count(totals.started, RESUME)
        checks.append(
            Check(
                "every resume complete",
                True,
                good_resumed == attempted,
                f"{good_resumed} of {attempted} resumed streams joined without gap or repeat "
                f"and ended with done ({dict(totals.resumed_on)})",
            )
        )
        warm = self.warm
        early, late = self._windows()
        if args.no_rss_check:
            checks.append(Check("RSS", False, True, "not applied: --no-rss-check"))
        elif warm is None or not early:
            checks.append(Check("RSS", False, True, "not applied: warm-up never ended"))
        else:
            reference = _median([sample.rss_kb for sample in early])
            growth = after.rss_kb / reference - 1
            peak = max(sample.rss_kb for sample in self.load_samples)
            checks.append(
                Check(
                    f"RSS at the end within {args.rss_tolerance:.0%} of after warm-up",
                    True,
                    growth <= args.rss_tolerance,
                    f"{reference / 1024:.1f} MB after warm-up (median of the {len(early)} "
                    f"samples from t={early[0].t:g} s; warm-up: {self.warm_reason}), "
                    f"{after.rss_kb / 1024:.1f} MB at the end: {growth:+.1%} (highest under "
                    f"load {peak / 1024:.1f} MB)",
                )
            )
        checks.append(
            Check(
                "fds idle: after = before",
                True,
                after.fds <= before.fds + 2,
                f"{before.fds} before the load, {after.fds} after it"
                + ("" if after.fds <= before.fds + 2 else f" ({final['fd_kinds']})")
                + (
                    f"; closed only when this process collected its garbage: {self.lingering}"
                    if self.lingering
                    else ""
                ),
            )
        )
        checks.append(
            Check(
                "tasks idle: after = before",
                True,
                after.tasks <= before.tasks + 2,
                f"{before.tasks} before the load, {after.tasks} after it",
            )
        )
        if not early or not late:
            why = "not applied: fewer than two samples under load after the warm-up"
            checks.append(Check("fds under load", False, True, why))
            checks.append(Check("tasks under load", False, True, why))
        else:
            # Each connection is one fd on either side, so the gateway's fds minus the load's
            # hold still while connections come and go; a stall shifts one sample (accepts
            # pending), hence medians over a window at each end.
            offset_early = _median([s.fds - s.driver_fds for s in early])
            offset_late = _median([s.fds - s.driver_fds for s in late])
            fds = _median([s.fds for s in early])
            slack = max(16, round(0.02 * fds))
            checks.append(
                Check(
                    "fds under load: no growth",
                    True,
                    offset_late <= offset_early + slack,
                    f"gateway fds minus the load's: {offset_early:g} over t={early[0].t:g}-"
                    f"{early[-1].t:g} s (gateway {fds:g} fds), {offset_late:g} over "
                    f"t={late[0].t:g}-{late[-1].t:g} s (medians); allowed +{slack}",
                )
            )
            # Tasks follow the streams the clients hold open (a transport's tasks live as
            # long as its stream, even when the flow ended first because a client lags).
            per_early = _median([(s.tasks - before.tasks) / max(1, s.streams) for s in early])
            per_late = _median([(s.tasks - before.tasks) / max(1, s.streams) for s in late])
            streams = _median([s.streams for s in late])
            slack = max(16, round(0.02 * (before.tasks + per_early * streams)))
            checks.append(
                Check(
                    "tasks under load: no growth",
                    True,
                    (per_late - per_early) * streams <= slack,
                    f"tasks per open stream over the {before.tasks} idle: {per_early:.3f} over "
                    f"t={early[0].t:g}-{early[-1].t:g} s, {per_late:.3f} over "
                    f"t={late[0].t:g}-{late[-1].t:g} s (medians), "
                    f"{(per_late - per_early) * streams:+.0f} tasks at {streams:g} streams; "
                    f"allowed +{slack}",
                )
            )
        return checks

    def _windows(self) -> tuple[list[Sample], list[Sample]]:
        """The first and the last samples under load after warm-up, up to 6 each (a minute).

        A third of them each when there are fewer than 18, so that the two do not overlap;
        both empty with fewer than two samples.
        """
        samples = self.load_samples
        if len(samples) < 2:
            return [], []
        count = max(1, min(6, len(samples) // 3))
        return samples[:count], samples[-count:]

    def _streams_report(self) -> dict[str, Any]:
        totals = self.totals
        by = {
            key: {
                "started": totals.started[key],
                "good": totals.good[key],
                "failed": totals.failed[key],
            }
            for key in sorted(totals.started)
        }
        return {
            "started": totals.count(totals.started),
            "good": totals.count(totals.good),
            "failed": totals.count(totals.failed),
            "disconnects": totals.count(totals.good, "disconnect"),
            "resumes": totals.count(totals.started, "resume"),
            "resumes_ok": totals.count(totals.good, "resume"),
            "resumed_on": dict(totals.resumed_on),
            "by_transport_and_kind": by,
            "failure_reasons": dict(totals.reasons),
            "first_failures": totals.first_failures,
        }

    def _load_report(self) -> dict[str, Any]:
        """Whether the load kept up: events, lateness and both sides' CPU under load."""
        under = [s for s in self.samples if s.phase in ("warm-up", "load") and s.t > 0]
        steady = [s for s in under if s.phase == "load"] or under
        lateness = self.tally.lateness

        def most(values: list[float]) -> float | None:
            return max(values) if values else None

        def mean(values: list[float]) -> float | None:
            return round(sum(values) / len(values), 3) if values else None

        return {
            "events": self.tally.events,
            "events_per_s_mean": mean([s.events_per_s for s in steady]),
            "events_per_s_target": self.args.streams * self.args.rate,
            "lateness_p50_ms": _percentile_ms(lateness, 0.5),
            "lateness_p99_ms": _percentile_ms(lateness, 0.99),
            "lateness_p999_ms": _percentile_ms(lateness, 0.999),
            "lateness_max_ms": _max_ms(lateness),
            "server_cpu_mean": mean([s.server_cpu for s in steady]),
            "server_cpu_max": most([s.server_cpu for s in steady]),
            "driver_cpu_mean": mean([s.driver_cpu for s in steady]),
            "driver_cpu_max": most([s.driver_cpu for s in steady]),
        }


def _print_report(report: dict[str, Any], out: Path) -> None:
    meta, streams, load = report["meta"], report["streams"], report["load"]
    options = meta["options"]
    print()
    print(
        f"soak: {options['streams']} streams at {options['rate']:g} tokens/s for "
        f"{options['minutes']:g} min (seed {meta['seed']}), {meta['seconds']:.0f} s in all; "
        f"pinned gateway CPU {meta['pinning']['gateway']}, load CPU {meta['pinning']['load']}"
    )
    if not meta["requirement_load"]:
        print(
            f"  below the requirement's load ({_FULL['streams']} streams at "
            f"{_FULL['rate']:g} tokens/s for {_FULL['minutes']:g} min)"
        )
    print(
        f"streams: {streams['started']} started, {streams['good']} as planned, "
        f"{streams['failed']} failed; {streams['disconnects']} disconnects, "
        f"{streams['resumes_ok']}/{streams['resumes']} resumes complete"
    )
    for line in streams["first_failures"][:5]:
        print(f"  failed: {line}")
    print(
        f"load: {load['events_per_s_mean'] or 0:.0f} events/s (target "
        f"{load['events_per_s_target']:.0f}); lateness p50 {load['lateness_p50_ms']} ms, "
        f"p99 {load['lateness_p99_ms']} ms, max {load['lateness_max_ms']} ms; CPU gateway "
        f"{load['server_cpu_mean']} (max {load['server_cpu_max']}), load "
        f"{load['driver_cpu_mean']} (max {load['driver_cpu_max']})"
    )
    if (load["driver_cpu_max"] or 0) >= 0.9:
        print("  note: the load process reached 90% of its CPU: it may have been the bottleneck")
    for check in report["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        if not check["applied"]:
            verdict = "n/a "
        print(f"  {verdict} {check['name']}: {check['detail']}")
    print(f"{'PASSED' if report['passed'] else 'FAILED'}; JSON in {out}")


def _full_load(args: argparse.Namespace) -> bool:
    """Whether the run asked for at least the requirement's streams and rate."""
    return bool(args.streams >= _FULL["streams"] and args.rate >= _FULL["rate"])


def _default_out(args: argparse.Namespace) -> Path:
    full = args.minutes >= _FULL["minutes"] and _full_load(args)
    return RESULTS / "soak.json" if full else _RAW / "soak.json"


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every applied check passed, 1 otherwise."""
    args = parse_args(argv)
    prepare_process(CLIENT_CPU)  # before any thread starts: grpc's inherit it

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so the gateway is stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    import uvloop

    soak = Soak(args)
    report = uvloop.run(soak.run())
    out = args.out or _default_out(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    _print_report(report, out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
