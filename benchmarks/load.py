"""The load client: ``python -m benchmarks.load '<job JSON>'`` prints one result as JSON.

It runs in its own process, pinned to other CPUs than the server's, and reads
the server's CPU time and memory from ``/proc/<pid>`` (the process and its
children) at the edges of each measured window. The job names the transport,
the ports and pid of a server that is already listening, the request dialect
(``llmbrick``, ``upstream``, ``openai``), the API key to send (if any), the
client's CPUs and a :class:`~benchmarks.scenarios.Scenario`, and may name
``sides``: processes the server relies on without owning them (the redis-server
of the ``*-redis`` kinds), whose CPU time is read at the same edges and reported
apart (``<name>_cpu_us_per_event``), never added to the server's.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from benchmarks.clients import (
    Counter,
    GrpcTarget,
    Stream,
    health_probe,
    open_slow_grpc,
    open_slow_sse,
    open_slow_ws,
    read_grpc,
    read_openai,
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

__all__ = ["Opener", "main", "run_job"]

_clock = time.perf_counter
_WARMUP_STREAMS = 4
#: Capacity: a step passes when new streams' TTFE p99 and the running streams'
#: lateness p99 stay under these (ms), and no stream failed.
TTFE_LIMIT_MS = 50.0
LATENESS_LIMIT_MS = 100.0
#: The client's CPU share (CPU seconds per wall second, on its one core) from which the
#: client, not the server, is taken to be what limits a measurement.
CLIENT_BOUND_SHARE = 0.9
_PROBE_EVENTS = 5  # capacity: paced events of each probe stream
_PLATEAU_KB = 1024  # slow: two RSS samples 1 s apart within this mean RSS stopped growing
_RSS_CAP_KB = 3 << 20  # slow: stop waiting once the server grew by 3 GiB (a shared machine)


class _Sides:
    """CPU time of the processes named in the job's ``sides`` over a measured window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.began: dict[str, float] = {}

    def begin(self) -> None:
        """Mark the window's start."""
        self.began = {name: cpu_seconds(pid, tree=False) for name, pid in self.pids.items()}

    def figures(self, events: int, wall: float) -> dict[str, float | None]:
        """Each side's CPU µs per event and CPU share since :meth:`begin`."""
        found: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid, tree=False) - self.began[name]
            found[f"{name}_cpu_s"] = cpu
            found[f"{name}_cpu_us_per_event"] = cpu / events * 1e6 if events else None
            found[f"{name}_cpu_share"] = cpu / wall if wall else None
        return found


class Opener:
    """Starts streams of one transport against one server."""

    def __init__(self, job: dict[str, Any], scenario: Scenario) -> None:
        self.transport: str = job["transport"]
        self.dialect: str = job["dialect"]
        self.port: int = job["port"]
        key = job.get("api_key")
        #: Sent with every request (gRPC: as metadata) when the server checks keys.
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.sides = _Sides(job.get("sides") or {})
        self.interval = scenario.interval
        self.burst = scenario.burst
        self._requests: dict[tuple[int, str, str | None], Any] = {}
        self.grpc: GrpcTarget | None = None
        self.grpc_new: GrpcTarget | None = None
        if self.transport == "grpc":
            self.grpc = GrpcTarget(self.port, scenario.streams_per_channel)
            self.grpc_new = GrpcTarget(self.port, 1)  # capacity probes: a channel each

    def body(self, count: int, mode: str, flow: str | None = None) -> dict[str, Any]:
        """The request body of a stream of ``count`` events in ``mode``."""
        return request_body(self.dialect, count, mode, self.interval, self.burst, flow)

    def request(self, count: int, mode: str, flow: str | None = None) -> Any:
        """The wire form of :meth:`body` for this transport (cached)."""
        key = (count, mode, flow)
        request = self._requests.get(key)
        if request is None:
            body = self.body(count, mode, flow)
            if self.transport == "sse":
                path = "/v1/chat/completions" if self.dialect == "openai" else "/chat/completions"
                request = sse_request(self.port, body, path, self.headers)
            elif self.transport == "ws":
                request = orjson.dumps({"type": "start", "id": "1", "request": body}).decode()
            else:
                from llmbrick_grpc.codec import encode_request

                request = encode_request(body)
            self._requests[key] = request
        return request

    def open(
        self,
        stream: Stream,
        count: int,
        mode: str,
        *,
        flow: str | None = None,
        new_channel: bool = False,
    ) -> Coroutine[Any, Any, None]:
        """A coroutine running one stream of ``count`` events in ``mode``.

        ``new_channel``: on gRPC, the stream opens a channel of its own (a new user)
        instead of joining the shared ones.
        """
        request = self.request(count, mode, flow)
        idle = mode == IDLE
        if self.transport == "sse":
            read = read_openai if self.dialect == "openai" else read_sse
            return read(stream, self.port, request, idle)
        if self.transport == "ws":
            url = f"ws://127.0.0.1:{self.port}/ws"
            return read_ws(stream, url, request, idle, self.headers)
        target = self.grpc_new if new_channel else self.grpc
        assert target is not None
        return read_grpc(stream, target.stub(), request, idle, tuple(self.headers.items()))


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


def _ms(values: list[float]) -> list[float]:
    return [value * 1000 for value in values]


def _ttfe(streams: list[Stream]) -> dict[str, float | None]:
    values = [t * 1000 for s in streams if (t := s.ttfe) is not None]
    return {"ttfe_p50_ms": percentile(values, 0.5), "ttfe_p99_ms": percentile(values, 0.99)}


def _errors(streams: list[Stream]) -> dict[str, int]:
    reasons = collections.Counter(s.error[:120] for s in streams if s.error)
    return dict(reasons.most_common(3))


async def _warm_up(opener: Opener, events: int) -> None:
    counter = Counter()
    streams = [Stream(counter) for _ in range(_WARMUP_STREAMS)]
    await _run_all(streams, lambda s: opener.open(s, events, FAST), 60.0, 0)


async def _fast(opener: Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    await _warm_up(opener, min(scenario.events, 500))
    counter = Counter()
    streams = [Stream(counter) for _ in range(scenario.streams)]
    opener.sides.begin()
    cpu, client, began = cpu_seconds(pid), time.process_time(), _clock()
    await _run_all(
        streams,
        lambda s: opener.open(s, scenario.events, scenario.mode),
        scenario.timeout,
        scenario.connect_limit,
    )
    wall = _clock() - began
    cpu = cpu_seconds(pid) - cpu
    client = time.process_time() - client
    events = counter.events
    sides = opener.sides.figures(events, wall)
    failed = sum(not s.ok or s.events != scenario.events + 1 for s in streams)
    return {
        "streams": scenario.streams,
        "mode": scenario.mode,
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
        **sides,
    }


async def _idle(opener: Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
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


async def _paced(opener: Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    await _warm_up(opener, 200)
    counter = Counter()
    running = [Stream(counter, interval=scenario.interval) for _ in range(scenario.streams)]
    count = scenario.background_events
    tasks = [asyncio.create_task(opener.open(s, count, PACED)) for s in running]
    began = _clock()
    await asyncio.wait([s.first_seen for s in running], timeout=scenario.timeout)
    ramp = _clock() - began
    counter.recording = True
    opener.sides.begin()
    cpu, client, events, began = cpu_seconds(pid), time.process_time(), counter.events, _clock()
    await asyncio.sleep(scenario.measure_s)
    cpu = cpu_seconds(pid) - cpu
    client = time.process_time() - client
    window = _clock() - began
    events = counter.events - events
    sides = opener.sides.figures(events, window)
    fresh = [Stream(Counter()) for _ in range(scenario.new_streams)]
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
    lateness = _ms(counter.lateness)
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
        "lateness_p50_ms": percentile(lateness, 0.5),
        "lateness_p99_ms": percentile(lateness, 0.99),
        "lateness_samples": len(lateness),
        "new_ttfe_p50_ms": new_ttfe["ttfe_p50_ms"],
        "new_ttfe_p99_ms": new_ttfe["ttfe_p99_ms"],
        **_ttfe(running),
        **sides,
    }


def _step_verdict(step: dict[str, Any]) -> str:
    """Why a capacity step failed ("" when it passed)."""
    reasons = []
    if step["ramp_missing"]:
        reasons.append(f"{step['ramp_missing']} streams got no first event")
    ttfe, lateness = step["ttfe_p99_ms"], step["lateness_p99_ms"]
    if ttfe is None or ttfe >= TTFE_LIMIT_MS:
        reasons.append("no probe got an event" if ttfe is None else f"TTFE p99 {ttfe:.0f} ms")
    if lateness is None or lateness >= LATENESS_LIMIT_MS:
        text = "no lateness sample" if lateness is None else f"lateness p99 {lateness:.0f} ms"
        reasons.append(text)
    if step["broken"]:
        reasons.append(f"{step['broken']} running streams broke")
    if step["probes_failed"]:
        reasons.append(f"{step['probes_failed']} probes failed")
    return ", ".join(reasons)


async def _capacity(opener: Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    """Step the paced background streams up until a step fails, the client saturates or time ends.

    Each step: open the missing background streams (``connect_limit`` at once), wait
    for their first events, settle, then a window of ``measure_s`` during which
    ``probes`` new streams open at even intervals; the window yields the background
    streams' lateness, the probes' TTFE and both sides' CPU shares.
    """
    await _warm_up(opener, 200)
    counter = Counter()
    background: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    gate = asyncio.Semaphore(scenario.connect_limit or 1_000_000)
    count = scenario.background_events

    async def gated(stream: Stream) -> None:
        # The gate covers a stream's connect up to its first event, not its whole life.
        await gate.acquire()
        stream.first_seen.add_done_callback(lambda _: gate.release())
        await opener.open(stream, count, PACED)

    steps: list[dict[str, Any]] = []
    limit = "every step passed"
    client_bound = False
    began = _clock()
    for target in scenario.steps:
        if _clock() - began > scenario.budget_s:
            limit = f"time budget ({scenario.budget_s:g} s) reached before {target:,} streams"
            break
        fresh = [Stream(counter, interval=scenario.interval) for _ in range(target - len(tasks))]
        background += fresh
        tasks += [asyncio.create_task(gated(stream)) for stream in fresh]
        ramp_began = _clock()
        ramp_limit = max(10.0, scenario.budget_s - (_clock() - began))
        await asyncio.wait([s.first_seen for s in fresh], timeout=ramp_limit)
        ramp = _clock() - ramp_began
        await asyncio.sleep(scenario.settle_s)
        counter.lateness = []
        counter.recording = True
        cpu, client, events = cpu_seconds(pid), time.process_time(), counter.events
        window_began = _clock()
        probes = [Stream(Counter()) for _ in range(scenario.probes)]
        opened = []
        pause = scenario.measure_s / max(1, scenario.probes)
        for probe in probes:
            run = _run_all(
                [probe],
                lambda s: opener.open(s, _PROBE_EVENTS, PACED, new_channel=True),
                30.0,
                0,
            )
            opened.append(asyncio.create_task(run))
            await asyncio.sleep(pause)
        window = _clock() - window_began
        cpu = cpu_seconds(pid) - cpu
        client = time.process_time() - client
        events = counter.events - events
        counter.recording = False
        await asyncio.wait(opened)
        lateness = _ms(counter.lateness)
        step: dict[str, Any] = {
            "streams": target,
            "ramp_s": ramp,
            "ramp_missing": sum(1 for s in fresh if not s.events),
            "broken": sum(1 for s, task in zip(background, tasks, strict=True) if task.done()),
            "probes_failed": sum(not p.ok or p.events != _PROBE_EVENTS + 1 for p in probes),
            **_ttfe(probes),
            "lateness_p50_ms": percentile(lateness, 0.5),
            "lateness_p99_ms": percentile(lateness, 0.99),
            "events_per_s": events / window if window else 0.0,
            "cpu_us_per_event": cpu / events * 1e6 if events else None,
            "server_cpu_share": cpu / window if window else None,
            "client_cpu_share": client / window if window else None,
        }
        failure = _step_verdict(step)
        step["passed"] = not failure
        step["why"] = failure
        steps.append(step)
        share = step["client_cpu_share"] or 0.0
        if share >= CLIENT_BOUND_SHARE:
            client_bound = True
            limit = (
                f"client-bound at {target:,} streams (client CPU share {share:.2f}): "
                + ("the step passed; " if not failure else f"{failure}; ")
                + "the server was not measured beyond"
            )
            break
        if failure:
            # The shares tell a busy server from one that waited (or a busy machine).
            server_share = step["server_cpu_share"] or 0.0
            limit = (
                f"failed at {target:,} streams: {failure} (CPU share: server "
                f"{server_share:.2f}, client {share:.2f})"
            )
            break
    for task in tasks:
        task.cancel()
    passed = [step["streams"] for step in steps if step["passed"]]
    # The last step of an unbroken run of passes from the first: a pass after a failure
    # cannot happen (the loop stops at the first failure).
    return {
        "capacity": passed[-1] if passed else 0,
        "limit": limit,
        "client_bound": client_bound,
        "steps": steps,
        "elapsed_s": _clock() - began,
        "failed": 0,
        "errors": _errors(background),
    }


async def _greedy(opener: Opener, scenario: Scenario, http_port: int) -> dict[str, Any]:
    """A greedy stream read by a fast client while ``GET /healthz`` is polled; see scenarios."""
    period, bound = scenario.poll_s, scenario.read_s + scenario.recover_s + 5.0
    baseline = []
    for _ in range(10):
        latency, status = await health_probe(http_port, 2.0)
        if status == 200:
            baseline.append(latency)
        await asyncio.sleep(period)
    polls: list[tuple[float, float, int]] = []  # sent, latency, status
    in_flight: list[float] = []  # when the poll now waiting was sent

    async def poll() -> None:
        due = _clock()
        while True:
            sent = _clock()
            in_flight[:] = [sent]
            latency, status = await health_probe(http_port, bound)
            in_flight.clear()
            polls.append((sent, latency, status))
            due = max(due + period, _clock())  # a stalled poll does not cause a burst after
            await asyncio.sleep(due - _clock())

    poller = asyncio.create_task(poll())
    stream = Stream(Counter())
    started = _clock()
    reader = asyncio.create_task(opener.open(stream, scenario.greedy_events, FAST, flow="greedy"))
    await asyncio.wait([reader], timeout=scenario.read_s)
    left = _clock()
    events = stream.events
    reader.cancel()  # drops the connection (SSE, WebSocket) or cancels the call (gRPC)
    await asyncio.wait([reader])

    def normal_after(moment: float) -> float | None:
        for sent, latency, status in polls:
            if sent + latency > moment and status == 200 and latency < period:
                return sent + latency
        return None

    recovered = None
    while _clock() - left < scenario.recover_s:
        recovered = normal_after(left)
        if recovered is not None:
            break
        await asyncio.sleep(0.01)
    now = _clock()
    poller.cancel()
    await asyncio.wait([poller])
    # Polls sent while the greedy stream was read; one still waiting counts with the time
    # it has waited so far (a lower bound on its latency).
    during = [latency for sent, latency, _ in polls if started <= sent < left]
    waiting = [now - sent for sent in in_flight if started <= sent < left]
    latencies = _ms(during + waiting)
    return {
        "events": events,
        "events_per_s": events / (left - started) if left > started else 0.0,
        "health_baseline_p50_ms": percentile(_ms(baseline), 0.5),
        "health_polls": len(latencies),
        "health_unanswered": len(waiting)
        + sum(1 for sent, _, status in polls if started <= sent < left and status != 200),
        "health_p50_ms": percentile(latencies, 0.5),
        "health_p99_ms": percentile(latencies, 0.99),
        "health_max_ms": max(latencies) if latencies else None,
        "recovery_ms": (recovered - left) * 1000 if recovered is not None else None,
        "recovery_bound_ms": scenario.recover_s * 1000,
        "error": stream.error if stream.error and not events else "",
        "failed": 0 if events else 1,
    }


async def _slow(opener: Opener, scenario: Scenario, pid: int) -> dict[str, Any]:
    """Clients that ask for 64 KiB events and never read; the server's RSS around them."""
    await _warm_up(opener, 100)
    await asyncio.sleep(0.5)
    before = rss_kb(pid)
    count = scenario.big_events
    held: list[socket.socket] = []
    calls: list[tuple[Any, Any]] = []
    if opener.transport == "sse":
        request = sse_request(opener.port, opener.body(count, FAST, "big"))
        for _ in range(scenario.slow_sse):
            held.append(await open_slow_sse(opener.port, request, scenario.rcvbuf))
        streams = scenario.slow_sse
    elif opener.transport == "ws":
        body = opener.body(count, FAST, "big")
        starts = [
            orjson.dumps({"type": "start", "id": str(n), "request": body}).decode()
            for n in range(1, scenario.slow_ws_streams + 1)
        ]
        for _ in range(scenario.slow_ws):
            held.append(await open_slow_ws(opener.port, starts, scenario.rcvbuf))
        streams = scenario.slow_ws * scenario.slow_ws_streams
    else:
        from llmbrick_grpc.codec import encode_request

        message = encode_request(opener.body(count, FAST, "big"))
        calls = [open_slow_grpc(opener.port, message) for _ in range(scenario.slow_grpc)]
        streams = scenario.slow_grpc
    connected = _clock()
    samples = [rss_kb(pid)]
    plateau = capped = False
    while _clock() - connected < scenario.plateau_s:
        await asyncio.sleep(1.0)
        samples.append(rss_kb(pid))
        if abs(samples[-1] - samples[-2]) <= _PLATEAU_KB:
            plateau = True
            break
        if samples[-1] - before > _RSS_CAP_KB:
            capped = True
            break
    during, plateau_at = samples[-1], _clock()
    for sock in held:
        sock.close()  # unread data: the kernel resets the connection
    for channel, call in calls:
        call.cancel()
        await channel.close()
    await asyncio.sleep(scenario.leave_s)
    after = rss_kb(pid)
    asked = streams * count * (64 << 10)
    return {
        "streams": streams,
        "asked_mb": asked / (1 << 20),
        "rss_before_kb": before,
        "rss_during_kb": during,
        "rss_after_kb": after,
        "kb_per_slow_stream": (during - before) / streams if streams else None,
        "plateau": plateau,
        "plateau_s": plateau_at - connected,
        "capped": capped,
        "rss_samples_kb": samples,
        "failed": 0,
    }


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario against one listening server and return its figures."""
    scenario = Scenario.from_json(job["scenario"])
    opener = Opener(job, scenario)
    pid = job["pid"]
    result: dict[str, Any]
    if scenario.kind == "greedy":
        result = await _greedy(opener, scenario, job["http_port"])
    else:
        kinds = {
            "fast": _fast,
            "idle": _idle,
            "paced": _paced,
            "capacity": _capacity,
            "slow": _slow,
        }
        result = await kinds[scenario.kind](opener, scenario, pid)
    # Recorded so that a run shows the two sides really ran on separate CPUs.
    result["server_cpus"] = cpus_allowed(pid)
    result["client_cpus"] = cpus_allowed(os.getpid(), tree=False)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the job given as the one argument and print its result as one JSON line."""
    job = orjson.loads((argv or sys.argv[1:])[0])
    prepare_process(job.get("client_cpus", [CLIENT_CPU]))
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
