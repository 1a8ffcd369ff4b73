"""Connection storm: time from connect to first event while many streams already run.

The server (``WebSocketServer`` under uvicorn, as ``.run()`` starts it) runs in
one subprocess; a second subprocess holds ``--background`` connections, each
streaming tokens at ``--rate`` per second; then this process opens ``--storm``
new connections at once, each starting one stream, and reports the latency
from the start of its TCP connect to its first event (percentiles, in ms).

The server is pinned to CPU 0; both clients (the background one and this process) to
CPU 1, with the suite's own helper (``benchmarks.common.prepare_process``), as in
``run.py``. They share that core, so at large counts the clients may be the bottleneck.

Usage: ``.venv/bin/python benchmarks/ws_storm.py [--background 1000] [--storm 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/ws_storm.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPU, SERVER_CPU, prepare_process  # noqa: E402


def _serve() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "adapters")]
    import uvicorn
    import uvloop

    from llmbrick import ChatRequest, Event, FlowRegistry
    from llmbrick_websocket import WebSocketServer

    flows = FlowRegistry()

    @flows.flow("default")
    async def tokens(request: ChatRequest) -> AsyncIterator[Event]:
        count, interval = str(request.messages[0].content).split()
        pause = float(interval)
        for _ in range(int(count)):
            yield {"type": "text", "text": "tok ", "model": "echo"}
            await asyncio.sleep(pause)

    server = WebSocketServer(flows)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    print(sock.getsockname()[1], flush=True)
    options = {**server.uvicorn_options(), "http": "httptools", "log_level": "warning"}
    config = uvicorn.Config(server.app, backlog=4096, lifespan="off", **options)
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


def _start(text: str) -> str:
    import orjson

    request = {"messages": [{"role": "user", "content": text}]}
    return orjson.dumps({"type": "start", "id": "1", "request": request}).decode()


async def _background(port: int, count: int, rate: float) -> None:
    from websockets.asyncio.client import connect

    started = 0

    async def one() -> None:
        nonlocal started
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            await ws.send(_start(f"1000000 {1 / rate}"))
            await ws.recv()
            started += 1
            if started == count:
                print("ready", flush=True)
            async for _ in ws:
                pass

    await asyncio.gather(*(one() for _ in range(count)))


async def _storm(port: int, count: int) -> list[float]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    go = asyncio.Event()

    async def one() -> None:
        await go.wait()
        began = time.perf_counter()
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, open_timeout=120) as ws:
            await ws.send(_start("1 0"))
            await ws.recv()
            latencies.append(time.perf_counter() - began)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0.1)
    go.set()
    await asyncio.gather(*tasks)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--background", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per background stream")
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        _serve()
        return
    if args.role == "background":
        import uvloop

        uvloop.run(_background(args.port, args.background, args.rate))
        return
    prepare_process(CLIENT_CPU)
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(prepare_process, SERVER_CPU),
    )
    background = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        if args.background:
            background = subprocess.Popen(
                [
                    *(sys.executable, __file__, "--role", "background", "--port", str(port)),
                    *("--background", str(args.background), "--rate", str(args.rate)),
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=functools.partial(prepare_process, CLIENT_CPU),
            )
            assert background.stdout is not None
            assert background.stdout.readline().strip() == "ready"
        import uvloop

        latencies = sorted(uvloop.run(_storm(port, args.storm)))
    finally:
        for process in (background, server):
            if process is not None:
                process.terminate()
                process.wait(10)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        f"server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}: "
        f"{args.storm} connections while {args.background} streams run at {args.rate:g} tokens/s:"
        f" connect-to-first-event p50 {pct(0.5):.0f} ms, p90 {pct(0.9):.0f} ms,"
        f" p99 {pct(0.99):.0f} ms, max {latencies[-1] * 1000:.0f} ms,"
        f" mean {statistics.mean(latencies) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
