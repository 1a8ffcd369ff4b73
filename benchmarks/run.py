"""Run the whole benchmark suite: ``.venv/bin/python -m benchmarks.run [--quick]``.

For every repetition, scenario and server, a fresh server process starts on
127.0.0.1 pinned to CPU 0, then a fresh load-client process pinned to CPU 1 runs
the scenario against it and reports its figures; the server is then killed. The
medians, spreads, ratios to the baselines and the issue's targets are printed and
written to ``benchmarks/results/latest.md`` (and the raw figures to ``latest.json``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import select
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.common import CLIENT_CPU, READY, ROOT, prepare_process
from benchmarks.report import render, targets
from benchmarks.scenarios import SERVERS, Scenario, Server, scenarios
from benchmarks.upstream import ensure_upstream, upstream_python

__all__ = ["main"]

RESULTS = ROOT / "benchmarks" / "results"
_RAW = RESULTS / "raw"
_START_TIMEOUT = 60.0


class _Failed(Exception):
    """A server or the load client did not do its part; the run records why."""


def _read_ready(process: subprocess.Popen[bytes], deadline: float) -> int:
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


def _server_command(server: Server) -> tuple[list[str], Path]:
    if server.name == "upstream":
        return [str(upstream_python()), str(ROOT / "benchmarks" / "upstream_server.py")], ROOT
    return [sys.executable, "-m", "benchmarks.servers", server.name], ROOT


def run_one(server: Server, scenario: Scenario, log: IO[bytes]) -> dict[str, Any]:
    """Start ``server``, run ``scenario`` against it in a client process, stop the server.

    Raises:
        _Failed: the server did not start or the client gave no result.
    """
    command, cwd = _server_command(server)
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=log)
    try:
        port = _read_ready(process, time.monotonic() + _START_TIMEOUT)
        job = {
            "transport": server.transport,
            "dialect": server.dialect,
            "port": port,
            "pid": process.pid,
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
            )
        except subprocess.TimeoutExpired:
            raise _Failed("the load client timed out") from None
        lines = client.stdout.decode(errors="replace").strip().splitlines()
        if client.returncode != 0 or not lines:
            raise _Failed(f"the load client failed (exit code {client.returncode}); see the log")
        result: dict[str, Any] = orjson.loads(lines[-1])
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
        unknown = names - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in names]
    transports = set(options.only.split(","))
    servers = [s for s in SERVERS if s.transport in transports]
    if options.servers:
        names = set(options.servers.split(","))
        servers = [s for s in servers if s.name in names]
    return chosen, servers


def _summary_line(result: dict[str, Any]) -> str:
    keys = (
        ("events_per_s", "{:,.0f} ev/s"),
        ("cpu_us_per_event", "{:.1f} us/ev"),
        ("ttfe_p99_ms", "TTFE p99 {:.0f} ms"),
        ("kb_per_stream", "{:.1f} KB/stream"),
        ("gap_p99_ms", "gap p99 {:.0f} ms"),
        ("new_ttfe_p99_ms", "new TTFE p99 {:.0f} ms"),
        ("failed", "failed {}"),
    )
    return ", ".join(fmt.format(result[k]) for k, fmt in keys if result.get(k) is not None)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 1 rep (development)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--only", default="sse,ws,grpc", help="transports, comma-separated")
    parser.add_argument("--scenarios", help="scenario names, comma-separated (default: all)")
    parser.add_argument("--servers", help="server names, comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/json go")
    options = parser.parse_args(argv)
    if options.reps is None:
        options.reps = 1 if options.quick else 3
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the report; the exit code is 0 even when a target fails."""
    options = _parse(argv)
    prepare_process(CLIENT_CPU)
    chosen, servers = _selected(options)
    versions: dict[str, Any] = {}
    if any(s.name == "upstream" for s in servers):
        try:
            versions["upstream"] = ensure_upstream()
        except RuntimeError as exc:
            print(f"WARNING: {exc}; upstream is left out of this run", flush=True)
            servers = [s for s in servers if s.name != "upstream"]
    _RAW.mkdir(parents=True, exist_ok=True)
    options.out.mkdir(parents=True, exist_ok=True)
    began, load_before = time.monotonic(), os.getloadavg()
    runs: list[dict[str, Any]] = []
    for rep in range(1, options.reps + 1):
        for scenario in chosen:
            for server in servers:
                if server.transport not in scenario.transports or server.name in scenario.skip:
                    continue
                label = f"[rep {rep}/{options.reps}] {scenario.name:<11} {server.name:<9}"
                print(label, end=" ", flush=True)
                started = time.monotonic()
                run: dict[str, Any] = {"rep": rep, "scenario": scenario.name, "server": server.name}
                log_path = _RAW / f"{scenario.name}-{server.name}-{rep}.log"
                with log_path.open("wb") as log:
                    try:
                        run["result"] = run_one(server, scenario, log)
                        line = _summary_line(run["result"])
                    except _Failed as exc:
                        run["error"] = str(exc)
                        line = f"ERROR: {exc} ({log_path.relative_to(ROOT)})"
                run["seconds"] = time.monotonic() - started
                runs.append(run)
                print(f"{line}  [{run['seconds']:.1f} s]", flush=True)
    elapsed = time.monotonic() - began
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "mode": "quick" if options.quick else "full",
        "reps": options.reps,
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
