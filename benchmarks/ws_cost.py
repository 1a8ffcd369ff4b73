"""Per-event server CPU cost of the llmbrick WebSocket adapter against a bare ``websockets`` server.

Each server runs in its own subprocess (uvloop, no compression); this process is
the client. It reads the server's CPU time (user + system, from
``/proc/<pid>/stat``) before sending ``start`` and after the terminal frame, and
divides by the number of events. Both servers send byte-identical frames::

    {"id":"1","event":{"type":"text","text":"tok ","model":"echo","id":"7",
     "progress":"IN_PROGRESS"}}

- ``bare``: ``websockets.asyncio.server`` sending frames encoded ahead of time
  (the transport's floor: framing, syscalls, the event loop).
- ``bare+json``: the same, encoding each frame with orjson as it goes.
- ``uvicorn``: a bare ASGI app under uvicorn (same settings as below) sending
  frames encoded ahead of time: uvicorn's own floor, no Litestar, no runtime.
- ``llmbrick``: ``WebSocketServer`` under uvicorn, as ``.run()`` starts it,
  with a flow yielding the events (runtime + adapter + uvicorn + Litestar).
- ``llmbrick+deflate``: the same with ``compression=True`` and a client that
  offers permessage-deflate, as browsers do.

The server subprocess is pinned to CPU 0 and this process (the client) to CPU 1, with
the suite's own helper (``benchmarks.common.prepare_process``), as in ``run.py``.

Usage: ``.venv/bin/python benchmarks/ws_cost.py [--events 200000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/ws_cost.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPU, SERVER_CPU, prepare_process  # noqa: E402

EVENT: dict[str, Any] = {"type": "text", "text": "tok ", "model": "echo"}
TICK = os.sysconf("SC_CLK_TCK")


def _frames(count: int) -> list[str]:
    import orjson

    frames = [
        orjson.dumps({"id": "1", "event": {**EVENT, "id": str(n), "progress": "IN_PROGRESS"}})
        for n in range(1, count + 1)
    ]
    done = {"type": "done", "id": str(count + 1), "progress": "DONE"}
    frames.append(orjson.dumps({"id": "1", "event": done}))
    return [frame.decode() for frame in frames]


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    return sock


async def _serve_bare(encode: bool, events: int) -> None:
    import orjson
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            request = orjson.loads(message)["request"]
            count = int(request["messages"][0]["content"])
            if encode:
                for n in range(1, count + 1):
                    event = {**EVENT, "id": str(n), "progress": "IN_PROGRESS"}
                    await ws.send(orjson.dumps({"id": "1", "event": event}).decode())
                done = {"type": "done", "id": str(count + 1), "progress": "DONE"}
                await ws.send(orjson.dumps({"id": "1", "event": done}).decode())
            else:
                for frame in ready if count == events else _frames(count):
                    await ws.send(frame)

    ready = _frames(events)  # encoded before any measurement
    sock = _listen()
    async with serve(handler, sock=sock, compression=None, ping_interval=None) as server:
        await server.serve_forever()


def _uvicorn(app: Any, options: dict[str, Any]) -> None:
    import uvicorn
    import uvloop

    settings = {
        **options,
        "http": "httptools",
        "log_level": "warning",
        "lifespan": "off",
    }
    sock = _listen()
    # Server.serve() runs on the caller's loop: uvloop here, as uvicorn.run(loop="auto") picks.
    uvloop.run(uvicorn.Server(uvicorn.Config(app, **settings)).serve(sockets=[sock]))


def _serve_asgi(events: int) -> None:
    import orjson

    ready = _frames(events)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            count = int(orjson.loads(message["text"])["request"]["messages"][0]["content"])
            for frame in ready if count == events else _frames(count):
                await send({"type": "websocket.send", "text": frame})

    _uvicorn(app, {"ws_per_message_deflate": False, "ws_ping_interval": None})


def _serve_llmbrick(compression: bool) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "adapters")]
    from llmbrick import ChatRequest, Event, FlowRegistry
    from llmbrick_websocket import WebSocketServer

    flows = FlowRegistry()

    @flows.flow("default")
    async def tokens(request: ChatRequest) -> AsyncIterator[Event]:
        for _ in range(int(str(request.messages[0].content))):
            yield {"type": "text", "text": "tok ", "model": "echo"}

    server = WebSocketServer(flows, compression=compression, ping_interval=None)
    _uvicorn(server.app, server.uvicorn_options())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


async def _measure(port: int, pid: int, events: int, compression: bool) -> tuple[float, float]:
    import orjson
    from websockets.asyncio.client import connect

    request = {"messages": [{"role": "user", "content": str(events)}]}
    start = orjson.dumps({"type": "start", "id": "1", "request": request}).decode()
    async with connect(
        f"ws://127.0.0.1:{port}/ws",
        compression="deflate" if compression else None,
        ping_interval=None,
        max_size=None,
        max_queue=256,
    ) as ws:
        before = _cpu_seconds(pid)
        began = time.perf_counter()
        await ws.send(start)
        received = 0
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            # Count event frames only: the server may acknowledge a start (``started``).
            if '"event":' in text:
                received += 1
            if text.endswith('"DONE"}}'):
                break
        wall = time.perf_counter() - began
        cpu = _cpu_seconds(pid) - before
    assert received == events + 1, received
    return cpu, wall


def _run_mode(mode: str, events: int, rounds: int) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--events", str(events)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=functools.partial(prepare_process, SERVER_CPU),
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        compression = mode.endswith("deflate")
        asyncio.run(_measure(port, process.pid, min(events, 20_000), compression))  # warm up
        cpus, walls = [], []
        for _ in range(rounds):
            cpu, wall = asyncio.run(_measure(port, process.pid, events, compression))
            cpus.append(cpu)
            walls.append(wall)
    finally:
        process.terminate()
        process.wait(10)
    cpu = statistics.median(cpus)
    return {
        "us_per_event": cpu / events * 1e6,
        "events_per_s": events / statistics.median(walls),
        "spread_us": (max(cpus) - min(cpus)) / events * 1e6,
    }


def _runtime_only(events: int) -> float:
    """CPU per event of FlowRuntime.run alone, in this process, with no socket."""
    sys.path[:0] = [str(ROOT), str(ROOT / "adapters")]
    from llmbrick import ChatRequest, Event, FlowRegistry, FlowRuntime

    flows = FlowRegistry()

    @flows.flow("default")
    async def tokens(request: ChatRequest) -> AsyncIterator[Event]:
        for _ in range(events):
            yield {"type": "text", "text": "tok ", "model": "echo"}

    runtime = FlowRuntime(flows)
    payload = {"messages": [{"role": "user", "content": "x"}]}

    async def drain() -> None:
        async for _ in runtime.run(None, payload):
            pass

    began = time.process_time()
    asyncio.run(drain())
    return (time.process_time() - began) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="bare,bare+json,uvicorn,llmbrick,llmbrick+deflate")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        if args.serve.startswith("bare"):
            uvloop.run(_serve_bare(args.serve == "bare+json", args.events))
        elif args.serve == "uvicorn":
            _serve_asgi(args.events)
        else:
            _serve_llmbrick(compression=args.serve.endswith("deflate"))
        return
    prepare_process(CLIENT_CPU)
    print(
        f"{args.events} events per round, median of {args.rounds} rounds, server CPU time; "
        f"server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
    )
    print(f"{'server':<18}{'us/event':>10}{'spread':>10}{'events/s':>12}")
    for mode in args.modes.split(","):
        row = _run_mode(mode, args.events, args.rounds)
        print(
            f"{mode:<18}{row['us_per_event']:>10.2f}{row['spread_us']:>10.2f}"
            f"{row['events_per_s']:>12.0f}"
        )
    print(f"{'runtime alone':<18}{_runtime_only(args.events):>10.2f}   (in-process, no socket)")


if __name__ == "__main__":
    main()
