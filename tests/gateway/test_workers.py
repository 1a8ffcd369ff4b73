"""``llmbrick serve --workers N``: processes sharing the ports, replaced when they die, drained
together.

The command runs as a user runs it; the flows of ``flows_app.py`` answer with the id of
the process that ran them, so a test sees which worker served a connection. Nothing
sleeps: each test waits for a printed or logged line, an event or a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from llmbrick_grpc import GrpcClient
from llmbrick_redis import RedisStore
from tests.components import free_port, redis_server, wait_for
from tests.gateway.cli_support import Served, gateway, run
from tests.support import TIMEOUT, parse_sse

pytestmark = pytest.mark.asyncio(loop_scope="module")

APP = "tests/gateway/flows_app.py:registry"
#: Workers start one interpreter after another (the first alone, to report an app's
#: mistakes once), on a machine shared with other tests.
START = 6 * TIMEOUT
#: Connections tried before concluding that a worker never answers on a port; each goes
#: to either worker, so missing one of two by chance has odds of 2**-200.
TRIES = 200


def worker_pids(served: Served) -> set[int]:
    """The process ids the supervisor printed: ``workers    2 processes: 123 456``."""
    for line in served.banner:
        matched = re.fullmatch(r"\s+workers\s+(\d+) processes: ([\d ]+)", line)
        if matched:
            pids = {int(pid) for pid in matched[2].split()}
            assert len(pids) == int(matched[1])
            return pids
    raise AssertionError(f"no workers line in {served.banner}")


def request(flow: str, **metadata: Any) -> dict[str, Any]:
    return {
        "flow": flow,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {key: str(value) for key, value in metadata.items()},
    }


async def http_pid(base: str) -> int:
    """The worker that ran ``pid`` over a new HTTP connection."""
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        answer = await client.post("/chat/completions", json={**request("pid"), "stream": False})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["text"])


async def grpc_pid(address: str) -> int:
    """The worker that ran ``pid`` over a new gRPC connection."""
    # gRPC shares connections between the channels of a process unless told not to.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with GrpcClient(address, timeout=TIMEOUT, options=options) as client:
        events = [event async for event in client.stream("pid", request("pid"))]
    assert events[-1]["type"] == "done", events
    return int(events[0]["text"])


async def answered_by(ask: Callable[[], Awaitable[int]], wanted: set[int]) -> set[int]:
    """The processes that answered new connections, until all of ``wanted`` did (bounded)."""
    seen: set[int] = set()
    for _ in range(TRIES):
        seen.add(await ask())
        if seen >= wanted:
            break
    return seen


async def held(base: str, gate: Path, first: asyncio.Future[int]) -> list[dict[str, Any]]:
    """Stream ``held`` over SSE: ``first`` gets the worker's pid; returns every event."""
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=START) as client,
        client.stream("POST", "/chat/completions", json=request("held", gate=gate)) as answer,
    ):
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if not first.done():
                    first.set_result(int(events[0]["text"]))
    return events


def texts(events: list[dict[str, Any]]) -> list[Any]:
    return [event.get("text") for event in events]


class Workers:
    """A gateway with two workers, shared by the module's tests, and its current pids."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.pids = worker_pids(served)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workers() -> AsyncIterator[Workers]:
    async with gateway(APP, "--workers", "2", start_timeout=START) as served:
        yield Workers(served)
        returncode, stderr = await served.stop()
    assert returncode == 0, stderr


async def test_both_workers_answer_on_the_http_and_the_grpc_port(workers: Workers) -> None:
    served = workers.served
    assert len(workers.pids) == 2 and os.getpid() not in workers.pids
    assert await answered_by(lambda: http_pid(served.http), workers.pids) == workers.pids
    assert await answered_by(lambda: grpc_pid(served.grpc_address), workers.pids) == workers.pids


async def test_a_killed_worker_is_replaced_and_streams_on_the_other_go_on(
    workers: Workers, tmp_path: Path
) -> None:
    served = workers.served
    gate = tmp_path / "gate"
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stream = asyncio.create_task(held(served.http, gate, first))
    survivor = await asyncio.wait_for(first, TIMEOUT)
    (victim,) = workers.pids - {survivor}
    mark = len(served.stderr.lines)
    os.kill(victim, signal.SIGKILL)
    died = await served.logged(
        rf"worker (\d) \(pid {victim}\) was killed by SIGKILL; starting another in [\d.]+ s", mark
    )
    again = await served.stderr.match(
        rf"worker {died[1]} is serving again \(pid (\d+)\)", mark, seconds=START
    )
    replacement = int(again[1])
    workers.pids = {survivor, replacement}
    # The stream on the other worker never noticed: it ends as it would have.
    gate.touch()
    events = await asyncio.wait_for(stream, TIMEOUT)
    assert texts(events) == [str(survivor), "released", None]
    assert events[-1]["type"] == "done"
    # And the replacement serves on both ports.
    assert await answered_by(lambda: http_pid(served.http), workers.pids) == workers.pids
    assert await answered_by(lambda: grpc_pid(served.grpc_address), workers.pids) == workers.pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_drains_every_worker_and_exits_0(sig: int, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with gateway(APP, "--workers", "2", start_timeout=START) as served:
        pids = worker_pids(served)
        # Streams until each worker runs one (a connection goes to either).
        streams: list[asyncio.Task[list[dict[str, Any]]]] = []
        running: set[int] = set()
        for _ in range(TRIES):
            first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            streams.append(asyncio.create_task(held(served.http, gate, first)))
            running.add(await asyncio.wait_for(first, TIMEOUT))
            if running == pids:
                break
        assert running == pids
        mark = len(served.stderr.lines)
        served.process.send_signal(sig)
        draining: set[int] = set()
        while draining != pids:
            line = await served.logged(
                r"llmbrick\.gateway\[(\d+)\]: draining: [1-9]\d* stream\(s\) running", mark
            )
            draining.add(int(line[1]))
            mark = served.stderr.lines.index(line.string) + 1
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            assert (await client.get("/healthz")).status_code == 503
        gate.touch()
        results = await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
        returncode, stderr = await served.wait()
    assert returncode == 0, stderr
    for events in results:
        assert texts(events)[1:] == ["released", None] and events[-1]["type"] == "done"
    for pid in pids:
        assert f"llmbrick.gateway[{pid}]: gateway stopped" in stderr


PORTS = [("--grpc-port", "gRPC"), ("--http-port", "HTTP: SSE and WebSocket")]


async def test_a_taken_port_is_still_an_error() -> None:
    # A plain listener, and one with SO_REUSEPORT (which the workers' gRPC servers set,
    # and could otherwise join): either way the port is taken.
    for reuse_port in (False, True):
        with socket.socket() as taken:
            if reuse_port:
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for option, label in PORTS:
                code, out, err = await run("serve", APP, "--workers", "2", option, str(port))
                assert (code, out) == (1, ""), err
                assert err == (
                    f"llmbrick: port {port} on 127.0.0.1 is in use ({label}): stop what runs "
                    f"there, or pick another port with {option} (0 picks a free one)\n"
                )


async def test_memory_store_with_workers_is_refused(tmp_path: Path) -> None:
    free = {"LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0"}
    code, _, err = await run("serve", APP, "--workers", "2", "--store", "memory", env=free)
    assert code == 2
    assert err == (
        "llmbrick: --store memory keeps streams inside one process, and with --workers 2 a "
        "resume can reach another worker: use a shared store (--store redis://HOST:PORT/DB) or "
        "--workers 1\n"
    )
    # An app that keeps its own streams in memory: worker 0 says so, once.
    app = tmp_path / "kept.py"
    app.write_text(
        textwrap.dedent(
            """
            from llmbrick import FlowRegistry, FlowRuntime, MemoryStore

            registry = FlowRegistry()

            @registry.flow("default")
            async def default(request):
                yield {"type": "text", "text": "kept"}

            runtime = FlowRuntime(registry, store=MemoryStore())
            """
        )
    )
    code, _, err = await asyncio.wait_for(
        run("serve", f"{app}:runtime", "--workers", "2", env=free), START
    )
    assert code == 2
    assert err == (
        "llmbrick: the app keeps streams in a MemoryStore, inside one process, and with "
        "--workers 2 a resume can reach another worker: use a shared store (--store "
        "redis://HOST:PORT/DB) or --workers 1\n"
    )


async def kept_in(url: str, stream_id: str) -> list[dict[str, Any]]:
    """A stream's events as the Redis store at ``url`` has them, once it has them all."""
    store = RedisStore.from_url(url)
    await store.open()
    try:

        async def written() -> bool:
            return await store.lookup(stream_id) is not None

        await wait_for(written, f"stream {stream_id} in Redis")
        record = await store.lookup(stream_id)
        assert record is not None
        async with asyncio.timeout(TIMEOUT):  # follows the stream until its terminal event
            return [dict(event) async for event in store.remote(record, 0)]
    finally:
        await store.aclose()


async def test_with_a_shared_store_a_stream_resumes_on_another_worker() -> None:
    async with (
        redis_server() as redis,
        gateway(APP, "--workers", "2", "--store", redis.url, start_timeout=START) as served,
        httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client,
    ):
        answer = await client.post("/chat/completions", json=request("pid"))
        ran = [data for _, _, data in parse_sse(answer.text)]
        runner = int(ran[0]["text"])
        # Writes to Redis trail the answer by a loop turn or so: read the stream back as
        # another instance would, so that killing its worker next loses nothing.
        assert await kept_in(redis.url, answer.headers["x-llmbrick-stream-id"]) == ran
        mark = len(served.stderr.lines)
        os.kill(runner, signal.SIGKILL)
        await served.logged(rf"worker \d \(pid {runner}\) was killed by SIGKILL", mark)
        # The worker that ran the stream is gone: another one replays it from Redis.
        location = answer.headers["location"]
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as fresh:
            again = await fresh.get(location)
        assert again.status_code == 200
        assert [data for _, _, data in parse_sse(again.text)] == ran
        assert ran[-1]["type"] == "done"
        returncode, stderr = await served.stop()
    assert returncode == 0, stderr


async def test_a_mistake_in_the_app_is_one_line_once() -> None:
    free = {"LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0"}
    code, out, err = await run("serve", "missing.py", "--workers", "3", env=free)
    assert (code, out, err) == (2, "", "llmbrick: no such file: missing.py\n")


async def test_the_benchmark_command_serves_with_workers() -> None:
    # As benchmarks/run.py starts our servers for `--workers N`: fixed ports, every transport.
    http, grpc = free_port(), free_port()
    command = [
        *("benchmarks.app:registry", "--host", "127.0.0.1", "--log-level", "warning"),
        *("--transports", "sse,websocket,grpc", "--http-port", str(http)),
        *("--grpc-port", str(grpc), "--workers", "2"),
    ]
    async with gateway(*command, start_timeout=START) as served:
        assert served.http == f"http://127.0.0.1:{http}"
        assert served.grpc_address == f"127.0.0.1:{grpc}"
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as client:
            flows = (await client.get("/flows")).json()["flows"]
        assert [flow["name"] for flow in flows] == ["default", "greedy", "big"]
        async with GrpcClient(served.grpc_address, timeout=TIMEOUT) as grpc_client:
            listed = await grpc_client.list_flows()
        assert [flow["name"] for flow in listed] == ["default", "greedy", "big"]
        returncode, stderr = await served.stop()
    assert returncode == 0, stderr
