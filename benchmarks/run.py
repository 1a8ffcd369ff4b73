"""Run the whole benchmark suite: ``.venv/bin/python -m benchmarks.run [--quick]``.

For every repetition, scenario and server, a fresh server process starts on
127.0.0.1 pinned to CPU 0, then a fresh load-client process pinned to CPU 1 runs
the scenario against it and reports its figures; the server is then killed. The
servers of a scenario run in a seeded random order on odd reps and in the reverse
of the previous rep's order on even reps, so no server always goes first. The
medians, spreads, ratios to the baselines and the issue's targets are printed and
written to ``benchmarks/results/latest.md`` (and the raw figures to ``latest.json``).

``--workers N`` (N > 1) serves our SSE, WebSocket and gRPC with the gateway command,
``python -m llmbrick_gateway serve benchmarks.app:registry --workers N``, pinned to
the first N CPUs; the load client (and every bare baseline's client) gets the rest.
The variants of ours (a store, keys and metrics, the OpenAI route) are one process
each and compare with one process: with N > 1 they are left out.

When a ``*-redis`` server is to run, one redis-server is started for the whole run
(pinned with the servers, emptied before each server starts) and stopped at its end;
if it cannot start (not installed), those servers are left out and the run says why.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import random
import select
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.common import CLIENT_CPU, READY, ROOT, SERVER_CPU, cpu_list, prepare_process
from benchmarks.redis_server import RedisProcess
from benchmarks.report import render, targets
from benchmarks.scenarios import SERVERS, Scenario, Server, scenarios
from benchmarks.upstream import ensure_upstream, upstream_python

__all__ = ["main", "read_ready"]

RESULTS = ROOT / "benchmarks" / "results"
_RAW = RESULTS / "raw"
_START_TIMEOUT = 60.0
_GATEWAY_TARGET = "benchmarks.app:registry"
_GATEWAY_TRANSPORTS = {"sse": "sse", "ws": "websocket", "grpc": "grpc"}


class _Failed(Exception):
    """A server or the load client did not do its part; the run records why."""


class _Rejected(_Failed):
    """The server command refused an option (``--workers``): the server is skipped."""


@dataclass(frozen=True)
class _Placement:
    """Where the servers and the load client run, and with how many workers."""

    workers: int
    server_cpus: frozenset[int]  # our servers
    bare_cpus: frozenset[int]  # baselines, and our servers when workers == 1
    client_cpus: frozenset[int]
    shared: bool  # no CPU was left for the client: it shares the servers' CPUs


def _placement(workers: int) -> _Placement:
    count = os.cpu_count() or 1
    single = frozenset({SERVER_CPU})
    if workers <= 1:
        return _Placement(1, single, single, frozenset({CLIENT_CPU}), False)
    server = frozenset(range(min(workers, count)))
    rest = frozenset(range(workers, count))
    return _Placement(workers, server, single, rest or frozenset(range(count)), not rest)


def read_ready(process: subprocess.Popen[bytes], deadline: float) -> int:
    """The port a server process prints on its ``READY <port>`` line (by ``deadline``)."""
    assert process.stdout is not None
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(READY + " "):
                    return int(line.split()[1])
        elif process.poll() is not None:
            break
    raise _Failed(f"the server did not start (exit code {process.poll()})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_health(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_gateway(
    process: subprocess.Popen[bytes], http: int | None, grpc: int | None, log_path: Path
) -> None:
    """Wait until the gateway answers on its ports; a refused ``--workers`` is _Rejected."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log_path.read_text(errors="replace")
            if "--workers" in text and ("unrecognized" in text or "error" in text):
                line = next((x for x in text.splitlines() if "--workers" in x), "--workers refused")
                raise _Rejected(f"llmbrick serve rejected --workers: {line.strip()}")
            raise _Failed(f"the gateway exited (exit code {process.returncode}); see the log")
        if (http is None or _answers_health(http)) and (grpc is None or _accepts(grpc)):
            return
        time.sleep(0.1)
    raise _Failed("the gateway did not answer on its ports in time")


def _start(
    server: Server,
    placement: _Placement,
    log: IO[bytes],
    log_path: Path,
    redis: RedisProcess | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, int], frozenset[int]]:
    """Start ``server``; its process, its ports (``port`` first) and the CPUs it is pinned to.

    ``redis``: the run's redis-server, for a ``*-redis`` server (emptied first).
    """
    ours = server.command == "servers" and server.ours and not server.base
    workers = placement.workers if ours else 1
    gateway = server.command == "gateway" or workers > 1
    cpus = placement.server_cpus if workers > 1 else placement.bare_cpus
    pin = functools.partial(prepare_process, set(cpus))
    if not gateway:
        if server.command == "upstream":
            command = [str(upstream_python()), str(ROOT / "benchmarks" / "upstream_server.py")]
        else:
            command = [sys.executable, "-m", "benchmarks.servers", server.name]
        if server.store == "redis":
            if redis is None:
                raise _Failed("no redis-server for this run")
            try:
                redis.flush()
            except RuntimeError as exc:
                raise _Failed(str(exc)) from None
            command += ["--redis", redis.url]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, preexec_fn=pin
        )
        try:
            port = read_ready(process, time.monotonic() + _START_TIMEOUT)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process, {"port": port}, cpus
    # The gateway: every transport for the abuse scenarios (health needs HTTP), else the
    # server's own. Ports are chosen here: worker processes cannot each pick port 0.
    transports = _GATEWAY_TRANSPORTS.values() if server.command == "gateway" else None
    chosen = list(transports or [_GATEWAY_TRANSPORTS[server.transport]])
    http = _free_port() if {"sse", "websocket"} & set(chosen) else None
    grpc = _free_port() if "grpc" in chosen else None
    command = [
        *(sys.executable, "-m", "llmbrick_gateway", "serve", _GATEWAY_TARGET),
        *("--host", "127.0.0.1", "--transports", ",".join(chosen), "--log-level", "warning"),
        *("--http-port", str(http or 0), "--grpc-port", str(grpc or 0)),
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, preexec_fn=pin)
    try:
        _wait_gateway(process, http, grpc, log_path)
        if workers > 1:
            time.sleep(1.0)  # the port answers once one worker listens; let the others start
    except BaseException:
        process.kill()
        process.wait()
        raise
    ports = {"http_port": http or 0, "grpc_port": grpc or 0}
    ports["port"] = (grpc if server.transport == "grpc" else http) or 0
    return process, ports, cpus


def run_one(
    server: Server,
    scenario: Scenario,
    placement: _Placement,
    log: IO[bytes],
    log_path: Path,
    redis: RedisProcess | None = None,
) -> dict[str, Any]:
    """Start ``server``, run ``scenario`` against it in a client process, stop the server.

    ``redis``: the run's redis-server (a ``*-redis`` server stores there; the client
    reads its CPU time as a side figure).

    Raises:
        _Failed: the server did not start or the client gave no result.
    """
    process, ports, cpus = _start(server, placement, log, log_path, redis)
    try:
        sides = {"redis": redis.pid} if redis is not None and server.store == "redis" else {}
        job = {
            "transport": server.transport,
            "dialect": server.dialect,
            **ports,
            "pid": process.pid,
            "api_key": server.api_key or None,
            "sides": sides,
            "client_cpus": sorted(placement.client_cpus),
            "scenario": scenario.to_json(),
        }
        try:
            client = subprocess.run(
                [sys.executable, "-m", "benchmarks.load", orjson.dumps(job).decode()],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=scenario.timeout * 2 + 60,
                check=False,
                preexec_fn=functools.partial(prepare_process, set(placement.client_cpus)),
            )
        except subprocess.TimeoutExpired:
            raise _Failed("the load client timed out") from None
        lines = client.stdout.decode(errors="replace").strip().splitlines()
        if client.returncode != 0 or not lines:
            raise _Failed(f"the load client failed (exit code {client.returncode}); see the log")
        result: dict[str, Any] = orjson.loads(lines[-1])
        result["server_cpus_expected"] = cpu_list(cpus)
        result["client_cpus_expected"] = cpu_list(placement.client_cpus)
        if process.poll() is not None:
            result["server_exited"] = process.returncode
        return result
    finally:
        process.kill()
        process.wait()


def _selected(options: argparse.Namespace) -> tuple[list[Scenario], list[Server]]:
    chosen = scenarios(options.quick)
    if options.scenarios:
        names = set(options.scenarios.split(","))
        known = {s.name for s in chosen} | {s.group for s in chosen if s.group}
        unknown = names - known
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in names or s.group in names]
    transports = set(options.only.split(","))
    servers = [s for s in SERVERS if s.transport in transports]
    if options.servers:
        names = set(options.servers.split(","))
        servers = [s for s in servers if s.name in names]
    return chosen, servers


def _orders(servers: list[Server], reps: int, seed: int) -> list[list[Server]]:
    """The server order of each rep: seeded shuffles on odd reps, reversed on even ones."""
    rng = random.Random(seed)
    orders: list[list[Server]] = []
    for rep in range(reps):
        if rep % 2:
            orders.append(orders[-1][::-1])
        else:
            order = list(servers)
            rng.shuffle(order)
            orders.append(order)
    return orders


def _summary_line(result: dict[str, Any]) -> str:
    keys = (
        ("events_per_s", "{:,.0f} ev/s"),
        ("cpu_us_per_event", "{:.1f} us/ev"),
        ("redis_cpu_us_per_event", "redis-server {:.1f} us/ev"),
        ("ttfe_p99_ms", "TTFE p99 {:.0f} ms"),
        ("kb_per_stream", "{:.1f} KB/stream"),
        ("lateness_p99_ms", "late p99 {:.0f} ms"),
        ("new_ttfe_p99_ms", "new TTFE p99 {:.0f} ms"),
        ("capacity", "capacity {:,}"),
        ("limit", "{}"),
        ("health_p99_ms", "health p99 {:.0f} ms"),
        ("recovery_ms", "recovered in {:.0f} ms"),
        ("rss_during_kb", "RSS with slow readers {:,} KB"),
        ("failed", "failed {}"),
    )
    return ", ".join(fmt.format(result[k]) for k, fmt in keys if result.get(k) is not None)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 1 rep (development)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--only", default="sse,ws,grpc", help="transports, comma-separated")
    parser.add_argument(
        "--scenarios", help="scenario or group names (abuse), comma-separated (default: all)"
    )
    parser.add_argument("--servers", help="server names, comma-separated (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where latest.md/json go (default: benchmarks/results, or results/raw/quick "
        "with --quick, so that a smoke test never overwrites the committed results)",
    )
    parser.add_argument("--seed", type=int, help="seed of the server order (default: random)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve ours with `llmbrick serve --workers N` on the first N CPUs (default 1)",
    )
    options = parser.parse_args(argv)
    if options.reps is None:
        options.reps = 1 if options.quick else 3
    if options.out is None:
        options.out = _RAW / "quick" if options.quick else RESULTS
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1 << 31)
    if options.workers < 1:
        parser.error("--workers must be at least 1")
    return options


def _measure(
    options: argparse.Namespace,
    chosen: list[Scenario],
    orders: list[list[Server]],
    placement: _Placement,
    skipped: dict[str, str],
    redis: RedisProcess | None,
) -> list[dict[str, Any]]:
    """Every rep, scenario and server in its order; a refused server joins ``skipped``."""
    runs: list[dict[str, Any]] = []
    for rep in range(1, options.reps + 1):
        for scenario in chosen:
            if scenario.max_reps and rep > scenario.max_reps:
                continue
            for server in orders[rep - 1]:
                if not scenario.runs_on(server) or server.name in skipped:
                    continue
                label = f"[rep {rep}/{options.reps}] {scenario.name:<12} {server.name:<15}"
                print(label, end=" ", flush=True)
                started = time.monotonic()
                run: dict[str, Any] = {"rep": rep, "scenario": scenario.name, "server": server.name}
                log_path = _RAW / f"{scenario.name}-{server.name}-{rep}.log"
                with log_path.open("wb") as log:
                    try:
                        run["result"] = run_one(server, scenario, placement, log, log_path, redis)
                        line = _summary_line(run["result"])
                    except _Rejected as exc:
                        skipped[server.name] = str(exc)
                        run["error"] = str(exc)
                        line = f"SKIPPED for the rest of the run: {exc}"
                    except _Failed as exc:
                        run["error"] = str(exc)
                        line = f"ERROR: {exc} ({log_path.relative_to(ROOT)})"
                run["seconds"] = time.monotonic() - started
                runs.append(run)
                print(f"{line}  [{run['seconds']:.1f} s]", flush=True)
    return runs


def _leave_out(found: list[Server], reason: str, skipped: dict[str, str]) -> None:
    """Skip ``found`` for the whole run, saying so in one line (and in the report)."""
    if found:
        names = ", ".join(server.name for server in found)
        print(f"WARNING: {reason}: {names} left out of this run", flush=True)
        skipped.update((server.name, reason) for server in found)


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the report; the exit code is 0 even when a target fails."""
    options = _parse(argv)
    placement = _placement(options.workers)
    prepare_process(set(placement.client_cpus))
    chosen, servers = _selected(options)
    versions: dict[str, Any] = {}
    if any(s.name == "upstream" for s in servers) and any(
        any(s.runs_on(server) for server in servers if server.name == "upstream") for s in chosen
    ):
        try:
            versions["upstream"] = ensure_upstream()
        except RuntimeError as exc:
            print(f"WARNING: {exc}; upstream is left out of this run", flush=True)
            servers = [s for s in servers if s.name != "upstream"]
    if placement.shared:
        print(
            f"WARNING: --workers {options.workers} leaves no CPU for the load client; "
            "it runs on every CPU, sharing them with the server",
            flush=True,
        )
    _RAW.mkdir(parents=True, exist_ok=True)
    options.out.mkdir(parents=True, exist_ok=True)
    print(f"seed {options.seed} (pass --seed {options.seed} for the same order)", flush=True)
    began, load_before = time.monotonic(), os.getloadavg()
    skipped: dict[str, str] = {}
    running = [s for s in servers if any(scenario.runs_on(s) for scenario in chosen)]
    if placement.workers > 1:
        reason = f"the variants of ours run as one process, not as --workers {placement.workers}"
        _leave_out([s for s in running if s.base], reason, skipped)
    redis: RedisProcess | None = None
    needs_redis = [s for s in running if s.store == "redis" and s.name not in skipped]
    if needs_redis:
        redis = RedisProcess(placement.bare_cpus)
        try:
            redis.start()
            print(
                f"redis-server {redis.version} on {redis.url}, pinned to CPU "
                f"{cpu_list(placement.bare_cpus)}",
                flush=True,
            )
            versions["redis-server"] = redis.version
        except RuntimeError as exc:
            _leave_out(needs_redis, str(exc), skipped)
            redis = None
    orders = _orders(servers, options.reps, options.seed)
    try:
        runs = _measure(options, chosen, orders, placement, skipped, redis)
    finally:
        if redis is not None:
            redis.stop()
    elapsed = time.monotonic() - began
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "mode": "quick" if options.quick else "full",
        "reps": options.reps,
        "seed": options.seed,
        "orders": [[s.name for s in order] for order in orders],
        "workers": options.workers,
        "server_cpus": cpu_list(placement.server_cpus),
        "bare_cpus": cpu_list(placement.bare_cpus),
        "client_cpus": cpu_list(placement.client_cpus),
        "client_shares_cpus": placement.shared,
        "skipped": skipped,
        "elapsed_s": elapsed,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    document = {
        "meta": meta,
        "scenarios": [s.to_json() for s in chosen],
        "servers": [asdict(s) for s in servers],
        "runs": runs,
    }
    markdown = render(document)
    (options.out / "latest.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (options.out / "latest.md").write_text(markdown)
    print()
    print(markdown)
    statuses = [check["status"] for check in targets(document)]
    print(
        f"targets: {statuses.count('PASS')} PASS, {statuses.count('FAIL')} FAIL, "
        f"{statuses.count('N/A')} N/A; {elapsed / 60:.1f} min",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
