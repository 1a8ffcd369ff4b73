"""Two real gateway processes sharing one real redis-server behave as one.

A stream started on A is followed live on B, cancelled from B, survives A being
killed (B delivers what A stored, then one lost-run end), and Redis going away
and coming back mid-run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from llmbrick_grpc import GrpcClient
from tests.components import RedisServer, redis_server
from tests.gateway.cli_support import Served, gateway
from tests.support import TIMEOUT, parse_sse

APP = str(Path(__file__).with_name("app.py"))


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


def serve(redis: RedisServer) -> Any:
    # A short lease, so that a killed instance's runs are declared lost within a second.
    return gateway(APP, "--store", f"{redis.url}?lease=1", "--no-metrics")


def ticks(tmp_path: Path, count: int, every: float) -> dict[str, Any]:
    marker = tmp_path / f"marker-{count}-{every}"
    return {
        "flow": "ticks",
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"count": count, "every": every, "marker": str(marker)},
    }


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["error"]["code"] if e["type"] == "error" else e.get("text", e["type"]) for e in events
    ]


async def start(client: httpx.AsyncClient, served: Served, request: dict[str, Any]) -> str:
    response = await client.post(served.http + "/streams", json=request)
    assert response.status_code == 201, response.text
    stream_id: str = response.json()["streamId"]
    return stream_id


async def visible(client: httpx.AsyncClient, served: Served, stream_id: str) -> None:
    """Wait until ``served`` finds the stream (its owner writes to Redis every flush_interval)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            # Only the status: the stream itself would follow the run to its end.
            async with client.stream("GET", f"{served.http}/streams/{stream_id}") as head:
                if head.status_code == 200:
                    return
                assert head.status_code == 404, await head.aread()
            await asyncio.sleep(0.05)


async def test_started_on_a_followed_live_and_cancelled_from_b(
    redis: RedisServer, tmp_path: Path
) -> None:
    request = ticks(tmp_path, count=400, every=0.02)
    async with serve(redis) as a, serve(redis) as b:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            stream_id = await start(client, a, request)
            await visible(client, b, stream_id)
            seen: list[dict[str, Any]] = []
            async with GrpcClient(b.grpc_address) as grpc:
                async for event in grpc.resume(stream_id):
                    seen.append(event)
                    if len(seen) == 5:  # following A live through Redis: cancel from B
                        deleted = await client.delete(f"{b.http}/streams/{stream_id}")
                        assert deleted.status_code == 204
    marker = Path(request["metadata"]["marker"])
    assert await asyncio.to_thread(marker.read_text) == "cancelled"  # A's flow stopped
    assert seen[-1]["error"]["code"] == "CANCELLED"
    assert [e["id"] for e in seen] == [str(n) for n in range(1, len(seen) + 1)]
    assert texts(seen[:-1]) == [f"t{n}" for n in range(1, len(seen))]


async def test_a_killed_instance_leaves_what_it_stored_and_one_lost_run_end(
    redis: RedisServer, tmp_path: Path
) -> None:
    request = ticks(tmp_path, count=1000, every=0.02)
    async with serve(redis) as b:
        async with serve(redis) as a, httpx.AsyncClient(timeout=TIMEOUT) as client:
            stream_id = await start(client, a, request)
            async with aconnect_sse(client, "GET", f"{a.http}/streams/{stream_id}") as source:
                async for sse in source.aiter_sse():
                    if json.loads(sse.data)["id"] == "5":
                        break
            await visible(client, b, stream_id)
            a.process.kill()  # SIGKILL: no drain, no goodbye to Redis
            await a.process.wait()
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            replay = parse_sse((await client.get(f"{b.http}/streams/{stream_id}")).text)
            again = parse_sse((await client.get(f"{b.http}/streams/{stream_id}")).text)
    events = [data for name, _, data in replay if name != ":"]
    assert len(events) >= 6
    assert [e["id"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert texts(events[:-1]) == [f"t{n}" for n in range(1, len(events))]
    assert events[-1]["error"]["code"] == "UNAVAILABLE" and "lost" in events[-1]["error"]["message"]
    assert [data for name, _, data in again if name != ":"] == events  # written once


async def test_redis_going_away_and_coming_back(redis: RedisServer, tmp_path: Path) -> None:
    request = ticks(tmp_path, count=40, every=0.02)
    async with serve(redis) as a, serve(redis) as b:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            received: list[dict[str, Any]] = []
            async with aconnect_sse(client, "POST", a.urls["SSE"], json=request) as source:
                stream_id = source.response.headers["x-llmbrick-stream-id"]
                async for sse in source.aiter_sse():
                    received.append(json.loads(sse.data))
                    if len(received) == 3:
                        await redis.stop()  # the connected client is still served
            assert texts(received) == [f"t{n}" for n in range(1, 41)] + ["done"]
            refused = await client.get(f"{b.http}/streams/{stream_id}")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "UNAVAILABLE"
            await redis.start()  # an empty Redis: new streams are resumable again
            fresh = await start(client, a, ticks(tmp_path, count=5, every=0.01))
            await visible(client, b, fresh)
            replay = parse_sse((await client.get(f"{b.http}/streams/{fresh}")).text)
    assert texts([data for name, _, data in replay if name != ":"]) == [
        "t1",
        "t2",
        "t3",
        "t4",
        "t5",
        "done",
    ]
