"""Kept streams in the core: the log, the memory store, resume, cancel and disconnect policies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from llmbrick import (
    ApiKeyAuth,
    ChatRequest,
    ErrorCode,
    Event,
    FlowNotFound,
    FlowRegistry,
    FlowRuntime,
    InvalidRequest,
    LLMBrickError,
    MemoryStore,
    RequestContext,
)
from llmbrick.store import StreamLog, StreamRecord

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def text(n: int) -> Event:
    return {"type": "text", "text": f"t{n}", "id": str(n), "progress": "IN_PROGRESS"}


def done(n: int) -> Event:
    return {"type": "done", "id": str(n), "progress": "DONE"}


def new_log(**bounds: int) -> StreamLog:
    options = {"max_events": 100, "max_bytes": 1 << 20, "window": 1 << 20, **bounds}
    return StreamLog(StreamRecord("s", "f", None), **options)


async def attached(log: StreamLog) -> None:
    """Let a reader task run until it follows ``log`` (a task needs a loop turn to start)."""
    for _ in range(100):
        if log.readers:
            return
        await asyncio.sleep(0)
    raise AssertionError("the reader never attached")


async def test_a_log_replays_after_an_id_and_follows_live() -> None:
    log = new_log()
    for n in (1, 2, 3):
        log.append(text(n), 10)
    seen: list[str] = []

    async def read() -> None:
        async for event in log.follow(1):
            seen.append(event["id"])

    reader = asyncio.create_task(read())
    await attached(log)
    log.append(text(4), 10)
    log.append(done(5), 10)
    await reader
    assert seen == ["2", "3", "4", "5"]
    # A finished log replays from any point, ending with its terminal event once.
    assert [e["id"] async for e in log.follow(0)] == ["1", "2", "3", "4", "5"]
    assert [e["id"] async for e in log.follow(5)] == ["5"]
    assert [e["id"] async for e in log.follow(9)] == ["5"]


async def test_a_log_drops_the_oldest_beyond_its_bounds_and_says_so() -> None:
    log = new_log(max_events=3)
    for n in range(1, 7):
        log.append(text(n), 10)
    assert (log.first, log.last) == (4, 6)
    with pytest.raises(LLMBrickError) as caught:
        log.events_after(0)
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
    assert "resume after 3 or later" in caught.value.message
    assert [e["id"] for e in log.events_after(3)] == ["4", "5", "6"]
    by_bytes = new_log(max_bytes=25)
    for n in range(1, 5):
        by_bytes.append(text(n), 10)
    assert by_bytes.first == 3 and by_bytes.bytes == 20


async def test_events_appended_directly_count_once_settled() -> None:
    log = new_log(max_events=40)
    for n in range(1, 31):
        log.events.append(text(n))
    # Readable at once, counted (and bounded) only once the producer settles.
    assert log.last == 30 and log.events_after(28)[0]["id"] == "29"
    assert len(log.events) < log.due
    log.events.append(text(31))
    log.events.append(text(32))
    assert len(log.events) >= log.due  # the producer must settle now
    log.settle()
    assert log.bytes == sum(70 + len(f"t{n}") for n in range(1, 33))
    for n in range(33, 45):
        log.events.append(text(n))
    log.settle()  # over 40: down to 38 (40 less its sixteenth, rounded down)
    assert (log.first, log.last) == (7, 44)
    assert log.bytes == sum(70 + len(f"t{n}") for n in range(7, 45))
    # append() counts what came directly before its own event.
    log.events.append(text(45))
    log.append(done(46), 10)
    assert log.finished and log.bytes == sum(70 + len(f"t{n}") for n in range(7, 46)) + 10


async def test_a_waiting_reader_makes_the_next_direct_append_settle() -> None:
    log = new_log()
    log.events.append(text(1))
    log.settle()
    reader = log.follow(1)
    waiting = asyncio.create_task(reader.__anext__())
    await attached(log)
    assert log.due == 0  # its wait asks the producer to settle at the next event
    log.events.append(text(2))
    assert len(log.events) >= log.due
    log.settle()
    assert (await waiting)["id"] == "2"
    assert log.due == len(log.events) + 32  # nobody waits: the producer settles in batches
    await reader.aclose()  # type: ignore[attr-defined]


async def test_a_reader_far_behind_holds_the_producer_back() -> None:
    log = new_log(window=30)
    reader = log.follow(0)
    first = asyncio.create_task(reader.__anext__())  # attaches, then waits for an event
    await attached(log)
    for n in range(1, 6):
        log.append(text(n), 10)
    assert (await first)["id"] == "1"
    assert log.behind() == 50  # the consumer holds event 1; 1..5 count as unread
    room = asyncio.create_task(log.room())
    await asyncio.sleep(0)
    assert not room.done()
    for n in (2, 3, 4):
        assert (await reader.__anext__())["id"] == str(n)
    await asyncio.wait_for(room, 1)  # two events unread: within the window
    assert log.behind() == 20
    await reader.aclose()  # type: ignore[attr-defined]
    assert log.readers == 0


def flows(release: asyncio.Event, log: list[str]) -> FlowRegistry:
    registry = FlowRegistry()

    async def slow(request: ChatRequest) -> AsyncIterator[Event]:
        try:
            yield {"type": "text", "text": "a"}
            await release.wait()
            yield {"type": "text", "text": "b"}
            log.append("ended")
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    registry.register("cancel", slow, on_disconnect="cancel", disconnect_choices=["continue"])
    registry.register("grace", slow, on_disconnect="grace", grace=0.05)
    registry.register("continue", slow, on_disconnect="continue")
    return registry


async def first_then_leave(runtime: FlowRuntime, flow: str, **options: Any) -> str:
    stream = runtime.start(flow, HELLO, **options)
    async with aclosing(stream):
        async for event in stream:
            assert event["text"] == "a"
            break
    return stream.id


async def test_the_same_events_with_and_without_a_store() -> None:
    release = asyncio.Event()
    release.set()
    plain = [e async for e in FlowRuntime(flows(release, [])).run("continue", HELLO)]
    kept = [
        e async for e in FlowRuntime(flows(release, []), store=MemoryStore()).run("continue", HELLO)
    ]
    assert plain == kept


async def test_cancel_policy_stops_the_flow_and_keeps_what_it_made() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    stream_id = await first_then_leave(runtime, "cancel")
    # Its client's task ran it, so it was closed where it stood: at its yield.
    assert log == ["finally"]
    resumed = await runtime.resume(stream_id, context=RequestContext())
    events = (await resumed.collect())["events"]
    assert [e["type"] for e in events] == ["text", "error"]
    assert events[-1]["error"] == {"code": "CANCELLED", "message": "the client went away"}
    assert runtime.active_streams == 0


async def test_cancel_policy_keeps_the_flow_for_a_reader_who_resumed_meanwhile() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    stream = runtime.start("cancel", HELLO)
    first = await anext(aiter(stream))
    resumed = await runtime.resume(stream.id, 0, context=RequestContext())
    assert await anext(aiter(resumed)) == first
    await stream.aclose()  # the first client leaves; the second still reads
    assert log == [] and runtime.active_streams == 1
    release.set()
    rest = [e async for e in resumed]
    assert [e["text"] for e in rest[:-1]] == ["b"] and rest[-1]["type"] == "done"
    assert log == ["ended", "finally"] and runtime.active_streams == 0
    # The other way round: the last reader leaving stops it.
    release.clear()
    log.clear()
    stream = runtime.start("cancel", HELLO)
    await anext(aiter(stream))
    resumed = await runtime.resume(stream.id, 1, context=RequestContext())
    await stream.aclose()
    await resumed.aclose()
    assert log[-1] == "finally" and "ended" not in log and runtime.active_streams == 0
    events = (await (await runtime.resume(stream.id, 0, context=RequestContext())).collect())[
        "events"
    ]
    assert events[-1]["error"]["code"] == "CANCELLED"


async def test_a_resumed_reader_gets_each_event_of_a_running_flow_as_it_is_made() -> None:
    # The runtime counts kept events in batches; a reader waiting for the next one must
    # still get it at once, not a batch later.
    gate: asyncio.Queue[None] = asyncio.Queue()
    registry = FlowRegistry()

    async def gated(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(1, 6):
            await gate.get()
            yield {"type": "text", "text": f"t{n}"}

    registry.register("gated", gated)
    runtime = FlowRuntime(registry, store=MemoryStore())
    stream = runtime.start("gated", HELLO)
    first_reader = asyncio.create_task(stream.collect())
    resumed = await runtime.resume(stream.id, 0, context=RequestContext())
    log = stream.log
    assert log is not None
    async with aclosing(resumed):
        for n in range(1, 6):
            reading = asyncio.ensure_future(anext(aiter(resumed)))
            for _ in range(100):  # until the reader waits for the next event
                if log.due == 0:
                    break
                await asyncio.sleep(0)
            assert log.due == 0, "the reader never waited"
            gate.put_nowait(None)
            event = await asyncio.wait_for(reading, 10)  # a guard against a hang, no more
            assert event["text"] == f"t{n}"
        assert (await anext(aiter(resumed)))["type"] == "done"
    assert [e["id"] for e in (await first_reader)["events"]] == ["1", "2", "3", "4", "5", "6"]


async def test_continue_policy_runs_to_the_end_for_a_client_to_read_later() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    stream_id = await first_then_leave(runtime, "continue")
    assert log == []  # still running, nobody reading
    release.set()
    await runtime.stream(stream_id).wait()  # type: ignore[union-attr]
    assert log == ["ended", "finally"]
    resumed = await runtime.resume(stream_id, 1, context=RequestContext())
    assert [e["text"] if e["type"] == "text" else e["type"] async for e in resumed] == [
        "b",
        "done",
    ]


async def test_grace_policy_waits_for_a_reader_and_cancels_without_one() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    # A client comes back within the grace period: the flow goes on.
    stream_id = await first_then_leave(runtime, "grace")
    resumed = await runtime.resume(stream_id, 1, context=RequestContext())
    release.set()
    assert [e["type"] async for e in resumed] == ["text", "done"]
    assert log == ["ended", "finally"]
    # Nobody comes back: cancelled once the grace period is over.
    release.clear()
    log.clear()
    stream_id = await first_then_leave(runtime, "grace")
    await runtime.stream(stream_id).wait()  # type: ignore[union-attr]
    assert log == ["cancelled", "finally"]
    last = await (await runtime.resume(stream_id, 1, context=RequestContext())).collect()
    assert last["error"] == {"code": "CANCELLED", "message": "no client came back within 0.05 s"}


async def consuming(stream: Any, got: asyncio.Event) -> list[Event]:
    """A client's task: reads the stream, setting ``got`` at the first event."""
    seen: list[Event] = []
    async with aclosing(stream):
        async for event in stream:
            seen.append(event)
            got.set()
    return seen


async def gone_after_the_first_event(
    runtime: FlowRuntime, flow: str
) -> tuple[Any, bool, asyncio.Task[list[Event]]]:
    """A client's task reads a stream's first event, then its client goes away: the stream,
    what ``disconnect`` answered (True: cancelled now), and the task."""
    stream = runtime.start(flow, HELLO)
    got = asyncio.Event()
    client = asyncio.create_task(consuming(stream, got))
    await got.wait()  # the client's task now waits inside the flow (or between two slices)
    return stream, stream.disconnect(client), client


async def test_a_client_leaving_while_its_task_waits_in_the_flow_does_not_cancel_a_kept_flow() -> (
    None
):
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    stream, cancelled_now, client = await gone_after_the_first_event(runtime, "continue")
    assert not cancelled_now, "left to run the flow to its end"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await client
    await stream.wait()
    assert log == ["ended", "finally"], "the flow ran to its end"
    events = (await (await runtime.resume(stream.id, 0, context=RequestContext())).collect())[
        "events"
    ]
    assert [e.get("text", e["type"]) for e in events] == ["a", "b", "done"]
    assert runtime.active_streams == 0


async def test_a_flow_run_on_by_its_gone_clients_task_waits_for_a_slow_reader() -> None:
    gate = asyncio.Event()
    registry = FlowRegistry()

    async def long(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "0"}
        await gate.wait()
        for n in range(1, 300):
            yield {"type": "text", "text": str(n)}

    registry.register("long", long, on_disconnect="continue")
    runtime = FlowRuntime(registry, store=MemoryStore(window=1000))
    stream, cancelled_now, client = await gone_after_the_first_event(runtime, "long")
    assert not cancelled_now
    resumed = await runtime.resume(stream.id, 0, context=RequestContext())
    gate.set()
    ids: list[str] = []
    most = 0
    async with aclosing(resumed):
        async for event in resumed:
            most = max(most, stream.log.behind())
            ids.append(event["id"])
    with pytest.raises(asyncio.CancelledError):
        await client  # once the flow has ended
    assert ids == [str(n) for n in range(1, 302)]
    # The flow waited for the reader: one event past the window at most (never awaiting,
    # it would otherwise run 32 events ahead between two turns of the loop).
    assert most <= 1000 + 80


async def test_the_grace_period_starts_when_the_client_leaves_not_at_the_next_event() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    stream, cancelled_now, client = await gone_after_the_first_event(runtime, "grace")
    assert not cancelled_now
    # The flow never makes another event; the grace period still ends it.
    with pytest.raises(asyncio.CancelledError):
        await client
    await stream.wait()
    assert log == ["cancelled", "finally"]
    last = await (await runtime.resume(stream.id, 1, context=RequestContext())).collect()
    assert last["error"] == {"code": "CANCELLED", "message": "no client came back within 0.05 s"}


async def test_a_client_leaving_between_two_slices_of_a_flow_that_never_waits() -> None:
    ended: list[str] = []
    registry = FlowRegistry()

    async def busy(request: ChatRequest) -> AsyncIterator[Event]:
        for n in range(100):
            yield {"type": "text", "text": str(n)}
        ended.append("done")

    registry.register("busy", busy, on_disconnect="continue")
    runtime = FlowRuntime(registry, store=MemoryStore())
    # The client's task is where the runtime lets the loop turn.
    stream, cancelled_now, client = await gone_after_the_first_event(runtime, "busy")
    assert not cancelled_now
    with pytest.raises(asyncio.CancelledError):
        await client
    await stream.wait()
    assert ended == ["done"]
    events = (await (await runtime.resume(stream.id, 0, context=RequestContext())).collect())[
        "events"
    ]
    assert [e["id"] for e in events] == [str(n) for n in range(1, 102)]


async def test_disconnect_cancels_at_once_when_the_flow_would_stop_anyway() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    for flow, serving in (("cancel", runtime), ("continue", FlowRuntime(flows(release, log)))):
        log.clear()
        _, cancelled_now, client = await gone_after_the_first_event(serving, flow)
        assert cancelled_now, flow  # the cancel policy, or no store: nothing to keep
        with pytest.raises(asyncio.CancelledError):
            await client
        assert log == ["cancelled", "finally"], flow


async def test_a_client_may_pick_a_policy_the_flow_allows() -> None:
    release, log = asyncio.Event(), []
    runtime = FlowRuntime(flows(release, log), store=MemoryStore())
    ask = RequestContext(headers={"llmbrick-on-disconnect": "continue"})
    stream_id = await first_then_leave(runtime, "cancel", context=ask)
    assert log == [] and runtime.stream(stream_id).policy == "continue"  # type: ignore[union-attr]
    release.set()
    await runtime.stream(stream_id).wait()  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="lets a client choose cancel"):
        runtime.start(
            "grace", HELLO, context=RequestContext(headers={"llmbrick-on-disconnect": "continue"})
        )


async def test_resume_checks_the_id_the_caller_and_the_position() -> None:
    release = asyncio.Event()
    release.set()
    registry = flows(release, [])
    runtime = FlowRuntime(
        registry, store=MemoryStore(), authenticator=ApiKeyAuth(["ka name=a", "kb name=b"])
    )
    alice = RequestContext(headers={"authorization": "Bearer ka"})
    stream = await runtime.open("continue", HELLO, context=alice)
    result = await stream.collect()
    assert [e["id"] for e in result["events"]] == ["1", "2", "3"]
    again = RequestContext(headers={"authorization": "Bearer ka"})
    assert [e["id"] async for e in await runtime.resume(stream.id, 2, context=again)] == ["3"]
    assert [e["id"] async for e in await runtime.resume(stream.id, 3, context=again)] == ["3"]
    assert [e["id"] async for e in await runtime.resume(stream.id, 99, context=again)] == ["3"]
    bob = RequestContext(headers={"authorization": "Bearer kb"})
    with pytest.raises(FlowNotFound) as other:
        await runtime.resume(stream.id, context=bob)
    with pytest.raises(FlowNotFound) as unknown:
        await runtime.resume("no-such-stream", context=again)
    assert other.value.message == unknown.value.message  # no hint that it exists
    token = stream.log.record.token  # type: ignore[union-attr]
    by_token = await runtime.resume(stream.id, 2, context=bob, token=token)
    assert [e["id"] async for e in by_token] == ["3"]
    with pytest.raises(InvalidRequest):
        await runtime.resume(stream.id, -1, context=again)
    with pytest.raises(FlowNotFound, match="keeps no streams"):
        await FlowRuntime(registry).resume(stream.id, context=RequestContext())


async def test_an_explicit_cancel_ends_the_stream_for_its_reader_and_keeps_the_output() -> None:
    for store in (None, MemoryStore()):
        release, log = asyncio.Event(), []
        runtime = FlowRuntime(flows(release, log), store=store)
        stream = runtime.start("continue", HELLO)
        events: list[Event] = []
        async with aclosing(stream):
            async for event in stream:
                events.append(event)
                if len(events) == 1:
                    await runtime.cancel(stream.id, context=RequestContext())
        assert [e["type"] for e in events] == ["text", "error"]
        assert events[-1]["error"]["code"] == "CANCELLED"
        assert log[-1] == "finally" and "ended" not in log
        with pytest.raises(FlowNotFound):
            await runtime.cancel("not-a-stream", context=RequestContext())


async def test_a_reader_cancelled_while_waiting_leaves_the_others_waiting() -> None:
    log = new_log()
    results: list[str] = []

    async def read() -> None:
        async for event in log.follow(0):
            results.append(event["id"])

    first, second = asyncio.create_task(read()), asyncio.create_task(read())
    for _ in range(10):
        await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait([first])
    log.append(text(1), 10)
    log.append(done(2), 10)
    await asyncio.wait_for(second, 1)
    assert results == ["1", "2"]


def test_a_memory_store_from_its_url_and_the_mistakes_it_names() -> None:
    store = MemoryStore.from_url("memory?keep_for=30&max_events=50&window=4096")
    assert (store.keep_for, store.max_events, store.window) == (30.0, 50, 4096)
    assert MemoryStore.from_url("memory").keep_for == MemoryStore().keep_for
    mistakes = {
        "memory?keep_for=soon": "the memory store's keep_for must be a positive float, got 'soon'",
        "memory?max_events=1.5": "the memory store's max_events must be a positive int, got '1.5'",
        "memory?keep_for=0": "keep_for must be positive, got 0.0",
        "memory?size=1": "the memory store has no setting 'size'; it takes keep_for, max_events",
        "memroy": "a memory store is written memory or memory?SETTING=VALUE, got 'memroy'",
    }
    for url, message in mistakes.items():
        with pytest.raises(ValueError) as raised:
            MemoryStore.from_url(url)
        assert str(raised.value).startswith(message), (url, str(raised.value))


async def test_a_finished_log_nobody_reads_is_packed_and_reads_back_the_same() -> None:
    log = new_log(max_events=4)
    for n in range(1, 7):
        log.append(text(n), 10)
    assert not log.pack()  # still running: it stays as it is
    log.append(done(7), 10)
    before = (log.first, log.last, log.bytes)
    assert log.pack() and log._events == []  # one bytes object instead of an object per event
    assert (log.first, log.last, log.bytes) == before == (3, 7, 50)
    assert [e["id"] for e in log.events_after(5)] == ["6", "7"]  # read back: unpacked
    assert log.pack()
    assert [e async for e in log.follow(3)] == [text(4), text(5), text(6), done(7)]
    with pytest.raises(LLMBrickError, match="events 1-2 of stream s are no longer kept"):
        log.events_after(0)
    # A reader attached keeps it unpacked, whatever a sweep asks.
    reader = log.follow(5)
    assert (await anext(reader))["id"] == "6"
    assert not log.pack()
    await reader.aclose()  # type: ignore[attr-defined]
    assert log.pack()
    # An event JSON cannot hold stays a Python object, unpacked.
    odd = new_log()
    odd.append({"type": "done", "id": "1", "when": object()}, 10)
    assert not odd.pack() and odd.events_after(0)[0]["type"] == "done"


async def test_a_store_packs_finished_streams_when_it_sweeps() -> None:
    store = MemoryStore()
    release = asyncio.Event()
    release.set()
    runtime = FlowRuntime(flows(release, []), store=store)
    first = runtime.start("continue", HELLO)
    expected = (await first.collect())["events"]
    store._swept = 0.0  # due: the sweep runs at most once a second
    second = runtime.start("continue", HELLO)
    assert first.log is not None and first.log._packed is not None
    resumed = await runtime.resume(first.id, 0, context=RequestContext())
    assert [e async for e in resumed] == expected
    await second.collect()


def test_a_log_at_its_bound_drops_a_sixteenth_at_a_time() -> None:
    log = new_log(max_events=64)
    for n in range(1, 65):
        log.append(text(n), 10)
    assert (log.first, log.last) == (1, 64)
    log.append(text(65), 10)  # over: down to 60 (64 less a sixteenth)
    assert (log.first, log.last) == (6, 65)
    for n in range(66, 70):
        log.append(text(n), 10)  # back to 64: nothing dropped
    assert (log.first, log.last) == (6, 69)


async def test_a_memory_store_finds_the_newest_stream_of_a_tag_while_it_keeps_it() -> None:
    store = MemoryStore(keep_for=60)
    first = store.add(StreamRecord("s1", "f", None, tag="chat:1"))
    assert (await store.tagged("chat:1")) is first.record
    second = store.add(StreamRecord("s2", "f", None, tag="chat:1"))
    assert (await store.tagged("chat:1")) is second.record
    assert await store.tagged("chat:2") is None
    second.append(done(1), 10)
    assert second.finished_at is not None
    second.finished_at -= 61  # past keep_for: forgotten, and its tag with it
    assert store.get("s2") is None and await store.tagged("chat:1") is None
    assert store.get("s1") is first  # an older stream of the tag is not found by it
