"""The Redis store with a real redis-server: two instances acting as one, faults, a lost run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest

from llmbrick import (
    ErrorCode,
    Event,
    FlowNotFound,
    FlowRegistry,
    FlowRuntime,
    LLMBrickError,
    RequestContext,
    Unavailable,
)
from llmbrick_redis import RedisStore
from tests.components import RedisServer, redis_server
from tests.support import TIMEOUT, Gate

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@asynccontextmanager
async def instance(url: str, gate: Gate, **options: Any) -> AsyncIterator[FlowRuntime]:
    """A runtime with its own RedisStore: one "instance" of a deployment."""
    registry = FlowRegistry()
    registry.register("continue", gate.flow, on_disconnect="continue")
    store = RedisStore.from_url(url, lease=options.pop("lease", 0.6), **options)
    await store.open()
    try:
        yield FlowRuntime(registry, store=store)
    finally:
        await store.aclose()


async def flushed(runtime: FlowRuntime) -> None:
    store = runtime.store
    assert isinstance(store, RedisStore)
    await store._flush()


def texts(events: list[Event]) -> list[str]:
    return [
        e["error"]["code"] if e["type"] == "error" else e.get("text", e["type"]) for e in events
    ]


async def first_events(runtime: FlowRuntime, count: int) -> tuple[str, list[Event]]:
    """Start the ``continue`` flow, read ``count`` events, leave (the flow goes on)."""
    stream = runtime.start("continue", HELLO)
    events: list[Event] = []
    async with aclosing(stream):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return stream.id, events


async def test_an_instance_follows_live_what_another_runs_and_cancels_it(
    redis: RedisServer,
) -> None:
    gate_a, gate_b = Gate(count=8, hold=3), Gate()
    async with instance(redis.url, gate_a) as a, instance(redis.url, gate_b) as b:
        stream_id, seen = await first_events(a, 2)
        await flushed(a)
        # B knows nothing of the stream but what Redis holds: it replays, then follows live.
        resumed = await b.resume(stream_id, 2, context=RequestContext())
        gate_a.release.set()
        events: list[Event] = []
        async for event in resumed:
            events.append(event)
        assert texts(seen) + texts(events) == [f"t{n}" for n in range(1, 9)] + ["done"]
        assert [e["id"] for e in events] == [str(n) for n in range(3, 10)]
        # Cancel from B: A's flow stops, and both see the CANCELLED end.
        gate_a.release.clear()
        gate_a.done.clear()
        stream_id, _ = await first_events(a, 1)
        await flushed(a)  # A writes in batches: let this one reach Redis
        reader = await b.resume(stream_id, 1, context=RequestContext())
        await b.cancel(stream_id, context=RequestContext())
        await asyncio.wait_for(gate_a.done.wait(), TIMEOUT)
        assert gate_a.ended[-1] == "cancelled"
        assert texts([e async for e in reader]) == ["t2", "CANCELLED"]
        with pytest.raises(FlowNotFound):
            await b.resume("no-such-stream", context=RequestContext())


async def test_a_lost_instance_leaves_what_it_stored_then_one_unavailable_end(
    redis: RedisServer,
) -> None:
    gate = Gate(count=8, hold=4)
    async with instance(redis.url, Gate()) as b:
        a_cm = instance(redis.url, gate)
        a = await a_cm.__aenter__()
        stream_id, _ = await first_events(a, 3)
        store = a.store
        assert isinstance(store, RedisStore)
        await store._flush()  # what A made so far is in Redis
        # A dies: its tasks stop without a goodbye, so its lease runs out.
        for task in store._tasks:
            task.cancel()
        await asyncio.wait(store._tasks)
        store._tasks = []
        resumed = await b.resume(stream_id, 0, context=RequestContext())
        events = [e async for e in resumed]
        assert texts(events)[:3] == ["t1", "t2", "t3"]
        assert events[-1]["error"]["code"] == "UNAVAILABLE"
        assert "lost" in events[-1]["error"]["message"]
        assert [e["id"] for e in events] == ["1", "2", "3", "4"]
        # Written once: every later reader sees the same end.
        again = [e async for e in await b.resume(stream_id, 0, context=RequestContext())]
        assert again == events
        gate.release.set()
        await a.stream(stream_id).wait()  # type: ignore[union-attr]
        await store.client.aclose()


async def test_redis_going_away_keeps_clients_served_and_resumes_report_unavailable(
    redis: RedisServer,
) -> None:
    gate = Gate(count=5, hold=3)
    async with instance(redis.url, gate) as a, instance(redis.url, Gate()) as b:
        stream = a.start("continue", HELLO)
        events: list[Event] = []
        async with aclosing(stream):
            async for event in stream:
                events.append(event)
                if len(events) == 2:
                    await redis.stop()
                    gate.release.set()  # A's client keeps getting events meanwhile
        assert texts(events) == ["t1", "t2", "t3", "t4", "t5", "done"]
        with pytest.raises(Unavailable):
            await b.resume(stream.id, 0, context=RequestContext())
        await redis.start()  # an empty Redis: new streams are resumable again
        gate.release.clear()
        gate.hold = 2
        stream_id, _ = await first_events(a, 1)
        await flushed(a)
        gate.release.set()
        after = [e async for e in await b.resume(stream_id, 1, context=RequestContext())]
        assert texts(after) == ["t2", "t3", "t4", "t5", "done"]


async def test_what_a_stream_made_while_redis_was_down_is_written_when_it_returns(
    redis: RedisServer,
) -> None:
    """The writer takes events from the stream's log: what the log still holds goes to Redis
    once it is back; what the log dropped meanwhile is a clear gap for readers elsewhere."""
    gate = Gate(count=40, hold=0)
    async with (
        instance(redis.url, gate, max_events=16) as a,
        instance(redis.url, Gate()) as b,
    ):
        await redis.stop()
        stream = a.start("continue", HELLO)
        made = [event async for event in stream]  # A's own client misses nothing
        assert texts(made)[-1] == "done" and len(made) == 41
        await redis.start()
        await flushed(a)
        log = a.store.get(stream.id)  # type: ignore[union-attr]
        assert log is not None and log.first > 1, "the log dropped its oldest events"
        with pytest.raises(LLMBrickError) as gap:
            async for _ in await b.resume(stream.id, 0, context=RequestContext()):
                pass
        assert gap.value.code is ErrorCode.FAILED_PRECONDITION
        kept = [e async for e in await b.resume(stream.id, log.first - 1, context=RequestContext())]
        assert kept == made[log.first - 1 :]


async def test_the_write_interval_rides_in_the_url_and_must_stay_under_the_lease() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0?flush_interval=0.002&lease=3")
    assert store.flush_interval == 0.002 and store.lease == 3
    await store.client.aclose()
    with pytest.raises(ValueError, match="flush_interval must be at least 0"):
        RedisStore.from_url("redis://127.0.0.1:1/0?flush_interval=2&lease=3")
    with pytest.raises(ValueError, match="flush_interval must be a number"):
        RedisStore.from_url("redis://127.0.0.1:1/0?flush_interval=soon")


async def test_an_unreachable_redis_at_start_is_one_clear_error() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(Unavailable, match="cannot reach the Redis stream store"):
        await store.open()
    await store.client.aclose()


async def test_resume_after_the_end_and_gaps_are_clear(redis: RedisServer) -> None:
    gate = Gate(count=3, hold=0)
    async with instance(redis.url, gate) as a, instance(redis.url, Gate()) as b:
        stream_id, _ = await first_events(a, 1)
        running = a.stream(stream_id)
        if running is not None:
            await running.wait()
        store = a.store
        assert isinstance(store, RedisStore)
        await store._flush()
        tail = [e async for e in await b.resume(stream_id, 99, context=RequestContext())]
        assert texts(tail) == ["done"]
        await store.client.xdel(store._key(stream_id), "2-0")
        with pytest.raises(LLMBrickError) as gap:
            async for _ in await b.resume(stream_id, 0, context=RequestContext()):
                pass
        assert gap.value.code is ErrorCode.FAILED_PRECONDITION


async def test_an_instance_finds_a_tagged_stream_another_runs(redis: RedisServer) -> None:
    """What a chat's resume route asks: the newest stream of a tag, from any instance."""
    gate_a, gate_b = Gate(count=4, hold=3), Gate()
    async with instance(redis.url, gate_a) as a, instance(redis.url, gate_b) as b:
        tagged = RequestContext()
        tagged.tag = "ui-chat:c1"
        older = a.start("continue", HELLO, context=tagged)
        await anext(aiter(older))
        again = RequestContext()
        again.tag = "ui-chat:c1"
        newer = a.start("continue", HELLO, context=again)
        await anext(aiter(newer))
        await flushed(a)
        assert await b.find("ui-chat:c1", context=RequestContext()) == newer.id
        assert await a.find("ui-chat:c1", context=RequestContext()) == newer.id
        assert await b.find("ui-chat:other", context=RequestContext()) is None
        gate_a.release.set()
        await older.collect()
        await newer.collect()
        resumed = await b.resume(newer.id, 0, context=RequestContext())
        assert texts((await resumed.collect())["events"]) == ["t1", "t2", "t3", "t4", "done"]
