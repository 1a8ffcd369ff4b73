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
is what one more event costs the server, start-up and warm-up excluded. Paced streams the
same way: ``--paced`` streams at once at 20 events/s, of 20 events each in one run and of
``--paced-events`` more in the other (a server under valgrind runs some fifty times slower,
so a few streams stand for many; what one more event costs does not depend on how many
streams there are while the server keeps up).

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
from benchmarks.common import FAST, PACED, ROOT
from benchmarks.load import Opener
from benchmarks.run import read_ready
from benchmarks.scenarios import Scenario

__all__ = ["main"]

_START_TIMEOUT = 600.0  # a server under valgrind starts some fifty times slower
_WARM_UP = 4  # streams of 500 events before the measured ones: imports, caches
_PACED_SMALL = 20  # events of each paced stream in the first run of a pair
_SUMMARY = re.compile(rb"^summary: (\d+)", re.MULTILINE)


async def _serve_streams(
    transport: str, port: int, fast: list[int], paced: tuple[int, int]
) -> None:
    """Warm-up streams, then one fast stream of each of ``fast``'s counts, then ``paced``'s
    number of paced streams at once, of its count of events each."""
    scenario = Scenario("store-instructions", "paced", "", streams=max(1, paced[0]))
    opener = Opener({"transport": transport, "dialect": "llmbrick", "port": port}, scenario)
    for count in [500] * _WARM_UP + fast:
        stream = Stream(Counter())
        await opener.open(stream, count, FAST)
        if not stream.ok or stream.events != count + 1:
            raise SystemExit(f"a stream failed: {stream.error or stream.events}")
    streams, count = paced
    running = [Stream(Counter(), interval=scenario.interval) for _ in range(streams)]
    await asyncio.gather(*(opener.open(stream, count, PACED) for stream in running))
    for stream in running:
        if not stream.ok or stream.events != count + 1:
            raise SystemExit(f"a paced stream failed: {stream.error or stream.events}")


def _instructions(
    name: str, transport: str, fast: list[int], paced: tuple[int, int], folder: Path
) -> int:
    """Instructions a server executes from start to exit, serving the given streams."""
    out = folder / f"{name}.cachegrind"
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
        asyncio.run(_serve_streams(transport, port, fast, paced))
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


def _per_event(
    name: str, transport: str, mode: str, args: argparse.Namespace, folder: Path
) -> float:
    """Instructions one more event of ``mode`` costs ``name``: the difference of two runs."""
    if mode == "fast":
        low = _instructions(name, transport, [args.small], (0, 0), folder)
        high = _instructions(name, transport, [args.small, args.events], (0, 0), folder)
        # The second run's stream has one more (terminal) event than it counts.
        return (high - low) / float(args.events + 1)
    few = (args.paced, _PACED_SMALL)
    more = (args.paced, _PACED_SMALL + args.paced_events)
    low = _instructions(name, transport, [], few, folder)
    high = _instructions(name, transport, [], more, folder)
    return (high - low) / float(args.paced * args.paced_events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="sse,grpc")
    parser.add_argument("--events", type=int, default=20_000, help="the measured events")
    parser.add_argument("--small", type=int, default=2_000, help="the first run's stream")
    parser.add_argument("--paced", type=int, default=10, help="paced streams at once (0: none)")
    parser.add_argument("--paced-events", type=int, default=200, help="measured, per stream")
    parser.add_argument("--reps", type=int, default=1, help="pairs of runs per server (median)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    results: dict[str, Any] = {
        "events": args.events,
        "small": args.small,
        "paced": args.paced,
        "paced_events": args.paced_events,
        "servers": {},
    }
    reps = range(args.reps)
    with tempfile.TemporaryDirectory(prefix="llmbrick-instructions-") as tmp:
        for transport in args.transports.split(","):
            for name in (transport, f"{transport}-memstore"):
                entry: dict[str, Any] = {}
                for mode in ("fast", "paced") if args.paced else ("fast",):
                    figures = [_per_event(name, transport, mode, args, Path(tmp)) for _ in reps]
                    per_event = statistics.median(figures)
                    entry[mode] = {"instructions_per_event": round(per_event)}
                    entry[mode]["reps"] = [round(figure) for figure in figures]
                    base = results["servers"].get(transport, {}).get(mode)
                    ratio = ""
                    if base is not None:
                        entry[mode]["ratio"] = round(per_event / base["instructions_per_event"], 4)
                        ratio = f"   vs {transport}: {entry[mode]['ratio']:.3f}x"
                    spread = (
                        f" ({min(figures):,.0f}-{max(figures):,.0f})" if len(figures) > 1 else ""
                    )
                    line = (
                        f"  {name:<16}{mode:<6}{per_event:>9,.0f} instructions/event{spread}{ratio}"
                    )
                    print(line, flush=True)
                results["servers"][name] = entry
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
