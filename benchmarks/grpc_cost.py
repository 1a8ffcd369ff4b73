"""Server CPU per streamed event: llmbrick's gRPC adapter against a bare ``grpc.aio`` servicer.

Usage::

    python benchmarks/grpc_cost.py                # every server, both flows
    python benchmarks/grpc_cost.py --streams 50 --tokens 200

Each server runs in its own subprocess; the client opens one channel, runs
``--streams`` concurrent streams and reads every event. The server's CPU time
comes from ``/proc/<pid>/stat`` (user + system) around the run, so the figure
is what the server process spent, whatever the client costs. Servers:

- ``bare``: a minimal ``grpc.aio`` servicer yielding one pre-built message per
  event (no runtime, no codec): the floor for one message per event.
- ``llmbrick``: ``GrpcServer`` as shipped (runtime, codec, coalescing).
- ``llmbrick-1``: the same with ``max_batch=1``, i.e. one message per event,
  to separate the cost of the runtime from the gain of coalescing.

Flows: ``paced`` sleeps ``--delay`` seconds before each token (a model's pace,
so events rarely wait for each other); ``fast`` yields every token at once
(a burst from an upstream buffer, so many events are ready per send).

Each server is pinned to CPU 0 and this process (the client) to CPU 1, with the
suite's own helper (``benchmarks.common.prepare_process``), as in ``run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "adapters")]

import grpc  # noqa: E402
import orjson  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from benchmarks.common import CLIENT_CPU, SERVER_CPU, prepare_process  # noqa: E402
from llmbrick_grpc._generated import event_pb2, flow_pb2, flow_pb2_grpc  # noqa: E402

__all__ = ["main"]

_TICK = os.sysconf("SC_CLK_TCK")


class BenchRequest(BaseModel):
    """What both flows take: how many tokens and how fast."""

    tokens: int
    delay: float = 0.0


async def _paced(request: BenchRequest) -> AsyncIterator[dict[str, Any]]:
    for i in range(request.tokens):
        await asyncio.sleep(request.delay)
        yield {"type": "text", "text": f"tok{i} ", "model": "bench"}


async def _fast(request: BenchRequest) -> AsyncIterator[dict[str, Any]]:
    for i in range(request.tokens):
        yield {"type": "text", "text": f"tok{i} ", "model": "bench"}


class _BareServicer(flow_pb2_grpc.FlowServiceServicer):
    """One message per event, built directly: what a hand-written servicer would do."""

    async def Invoke(self, request: flow_pb2.StreamRequest, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

    async def ListFlows(self, request: flow_pb2.ListFlowsRequest, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

    async def Resume(self, request: flow_pb2.ResumeRequest, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server keeps no streams")
        yield  # never reached (abort raises); makes this the streaming method it overrides

    async def Cancel(self, request: flow_pb2.CancelRequest, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server keeps no streams")

    async def Stream(
        self, request: flow_pb2.StreamRequest, context: Any
    ) -> AsyncIterator[flow_pb2.StreamResponse]:
        params = orjson.loads(request.extra_json)
        tokens, delay = params["tokens"], params.get("delay", 0.0)
        paced = request.flow == "paced"
        for i in range(tokens):
            if paced:
                await asyncio.sleep(delay)
            yield flow_pb2.StreamResponse(
                events=[
                    event_pb2.Event(
                        type="text",
                        id=str(i + 1),
                        progress=event_pb2.PROGRESS_IN_PROGRESS,
                        text=f"tok{i} ",
                        model="bench",
                    )
                ]
            )
        yield flow_pb2.StreamResponse(
            events=[
                event_pb2.Event(type="done", id=str(tokens + 1), progress=event_pb2.PROGRESS_DONE)
            ]
        )


async def _serve(kind: str) -> None:
    if kind == "bare":
        server = grpc.aio.server()
        flow_pb2_grpc.add_FlowServiceServicer_to_server(_BareServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()
        return
    from llmbrick_grpc import GrpcServer

    app = GrpcServer(max_batch=1 if kind == "llmbrick-1" else 64)
    app.runtime.registry.register("paced", _paced, request_model=BenchRequest)
    app.runtime.registry.register("fast", _fast, request_model=BenchRequest)
    port = await app.start(port=0)
    print(port, flush=True)
    await app.wait_for_termination()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


async def _measure(port: int, pid: int, flow: str, streams: int, tokens: int, delay: float) -> Any:
    request = flow_pb2.StreamRequest(
        flow=flow, extra_json=orjson.dumps({"tokens": tokens, "delay": delay}).decode()
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        await channel.channel_ready()

        async def one() -> tuple[int, int]:
            events = messages = 0
            async for response in stub.Stream(request):
                messages += 1
                events += len(response.events)
            return events, messages

        await asyncio.gather(*(one() for _ in range(min(streams, 4))))  # warm up
        cpu = _cpu_seconds(pid)
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(streams)))
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(pid) - cpu
    events = sum(c[0] for c in counts)
    messages = sum(c[1] for c in counts)
    return events, messages, cpu, wall


async def _bench(kind: str, flows: list[str], options: argparse.Namespace) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        kind,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=functools.partial(prepare_process, SERVER_CPU),
    )
    try:
        assert process.stdout is not None
        port = int(await process.stdout.readline())
        lines = []
        for flow in flows:
            events, messages, cpu, wall = await _measure(
                port, process.pid, flow, options.streams, options.tokens, options.delay
            )
            lines.append(
                f"{kind:<11} {flow:<6} events={events:>7} messages={messages:>7} "
                f"server_cpu={cpu:6.2f}s  {cpu / events * 1e6:7.1f} us/event  "
                f"{events / wall:9.0f} events/s  ({events / max(cpu, 1e-9):8.0f} events per CPU-s)"
            )
            print(lines[-1], flush=True)
        return lines
    finally:
        process.terminate()
        await process.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (or, with ``--serve``, one server for it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["bare", "llmbrick", "llmbrick-1"])
    parser.add_argument("--servers", default="bare,llmbrick-1,llmbrick")
    parser.add_argument("--flows", default="paced,fast")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.01)
    options = parser.parse_args(argv)
    if options.serve:
        asyncio.run(_serve(options.serve))
        return 0
    prepare_process(CLIENT_CPU)
    print(
        f"{options.streams} concurrent streams x {options.tokens} tokens over one channel; "
        f"paced delay {options.delay * 1000:g} ms; {os.cpu_count()} CPUs; server pinned to "
        f"CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}",
        flush=True,
    )
    for kind in options.servers.split(","):
        asyncio.run(_bench(kind, options.flows.split(","), options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
