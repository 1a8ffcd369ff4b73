"""``SendBuffer``: bounded in bytes, one consumer, order kept, errors after the items."""

from __future__ import annotations

import asyncio

import pytest

from llmbrick.flow_control import SendBuffer


async def test_get_and_take_keep_order_and_count_bytes() -> None:
    buffer: SendBuffer[str] = SendBuffer(100)
    for item in "abcd":
        await buffer.put(item, 10)
    assert len(buffer) == 4 and buffer.buffered_bytes == 40
    assert await buffer.get() == "a"
    assert await buffer.get() == "b"
    assert len(buffer) == 2 and buffer.buffered_bytes == 20
    await buffer.put("e", 10)
    assert await buffer.take() == ["c", "d", "e"]
    assert len(buffer) == 0 and buffer.buffered_bytes == 0
    await buffer.put("f", 10)
    assert await buffer.get() == "f" and len(buffer) == 0


async def test_a_full_buffer_makes_producers_wait_until_it_drains() -> None:
    buffer: SendBuffer[int] = SendBuffer(20)
    await buffer.put(1, 10)
    await buffer.put(2, 10)  # now full
    blocked = [asyncio.create_task(buffer.put(n, 10)) for n in (3, 4)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in blocked)
    assert await buffer.get() == 1  # below the bound again: the first producer goes on
    await blocked[0]
    assert not blocked[1].done(), "full again: the second one still waits"
    assert await buffer.take() == [2, 3]
    await blocked[1]
    assert await buffer.take() == [4]


async def test_a_cancelled_producer_passes_its_wakeup_on() -> None:
    buffer: SendBuffer[int] = SendBuffer(10)
    await buffer.put(0, 10)
    first = asyncio.create_task(buffer.put(1, 1))
    second = asyncio.create_task(buffer.put(2, 1))
    await asyncio.sleep(0)
    assert await buffer.get() == 0
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert await buffer.take() == [2]


async def test_close_hands_over_what_is_left_then_the_error() -> None:
    buffer: SendBuffer[str] = SendBuffer(100)
    await buffer.put("a", 1)
    await buffer.put("b", 1)
    buffer.close(ValueError("source failed"))
    assert await buffer.get() == "a"
    assert await buffer.take() == ["b"]
    with pytest.raises(ValueError, match="source failed"):
        await buffer.take()
    with pytest.raises(RuntimeError, match="closed"):
        await buffer.put("c", 1)


async def test_a_waiting_consumer_wakes_on_put_and_ends_on_close() -> None:
    buffer: SendBuffer[str] = SendBuffer(100)
    getter = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    await buffer.put("x", 1)
    assert await getter == "x"
    taker = asyncio.create_task(buffer.take())
    await asyncio.sleep(0)
    buffer.close()
    assert await taker == []
    assert await buffer.get() is None
