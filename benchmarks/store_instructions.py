"""Instructions per event a server executes with and without a stream store, under valgrind.

CPU time on a shared machine moves by more from one minute to the next than a store adds
(``store_cost.py`` works around that by interleaving). An instruction count does not move
at all: valgrind's ``cachegrind`` counts every instruction a process executes, the same on a
loaded machine as on an idle one. It is not time (a cache miss costs more than an add), so
this is a second instrument beside ``store_cost.py``, not a replacement for it.

Each server (``benchmarks/servers.py``: ``sse``, ``sse-memstore``, ``grpc``,
``grpc-memstore``) runs twice under ``valgrind --tool=cachegrind``, with the same hash seed:
once serving warm-up streams and a stream of ``--small`` events, once the same and then
``--events`` more; the difference of the two totals, divided by the difference in events,
is what one more event costs the server, start-up and warm-up excluded.

Usage: ``.venv/bin/python -m benchmarks.store_instructions [--transports sse,grpc]
[--events 20000] [--small 2000] [--reps 1] [--out FILE.json]`` (needs ``valgrind`` on the
PATH; about 6 minutes per rep for both transports). gRPC's counts move by a percent or two
from run to run (its threads poll on their own schedule); SSE's by about 0.1%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/store_instructions.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clients import Counter, Stream
from benchmarks.common import FAST, ROOT
from benchmarks.load import Opener
from benchmarks.run import read_ready
from benchmarks.scenarios import Scenario

__all__ = ["main"]

_START_TIMEOUT = 600.0  # a server under valgrind starts some fifty times slower
_WARM_UP = 4  # streams of 500 events before the measured ones: imports, caches
_SUMMARY = re.compile(rb"^summary: (\d+)", re.MULTILINE)


async def _serve_streams(transport: str, port: int, counts: list[int]) -> None:
    scenario = Scenario("store-instructions", "fast", "", streams=1)
    opener = Opener({"transport": transport, "dialect": "llmbrick", "port": port}, scenario)
    for count in [500] * _WARM_UP + counts:
        stream = Stream(Counter())
        await opener.open(stream, count, FAST)
        if not stream.ok or stream.events != count + 1:
            raise SystemExit(f"a stream failed: {stream.error or stream.events}")


def _instructions(name: str, transport: str, counts: list[int], folder: Path) -> int:
    """Instructions a server executes from start to exit, serving ``counts`` streams."""
    out = folder / f"{name}-{sum(counts)}.cachegrind"
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        f"--cachegrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks.servers",
        name,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    log = (folder / f"{name}.log").open("ab")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        port = read_ready(process, time.monotonic() + _START_TIMEOUT)
        asyncio.run(_serve_streams(transport, port, counts))
        process.send_signal(signal.SIGINT)
        process.wait(timeout=_START_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    found = _SUMMARY.search(out.read_bytes())
    if found is None:
        raise SystemExit(f"{name}: no instruction count in {out} (see {folder / name}.log)")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="sse,grpc")
    parser.add_argument("--events", type=int, default=20_000, help="the measured events")
    parser.add_argument("--small", type=int, default=2_000, help="the first run's stream")
    parser.add_argument("--reps", type=int, default=1, help="pairs of runs per server (median)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    results: dict[str, Any] = {"events": args.events, "small": args.small, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="llmbrick-instructions-") as tmp:
        for transport in args.transports.split(","):
            base: float | None = None
            for name in (transport, f"{transport}-memstore"):
                figures = []
                for _ in range(args.reps):
                    low = _instructions(name, transport, [args.small], Path(tmp))
                    high = _instructions(name, transport, [args.small, args.events], Path(tmp))
                    # The second run's stream has one more (terminal) event than it counts.
                    figures.append((high - low) / (args.events + 1))
                per_event = statistics.median(figures)
                entry: dict[str, Any] = {
                    "instructions_per_event": round(per_event),
                    "reps": [round(figure) for figure in figures],
                }
                if base is None:
                    base = per_event
                else:
                    entry["ratio"] = round(per_event / base, 4)
                results["servers"][name] = entry
                ratio = f"   vs {transport}: {entry['ratio']:.3f}x" if "ratio" in entry else ""
                spread = f" ({min(figures):,.0f}-{max(figures):,.0f})" if len(figures) > 1 else ""
                line = f"  {name:<16}{per_event:>10,.0f} instructions/event{spread}{ratio}"
                print(line, flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
