"""``Pump``: drives an async iterator in its own task so a sender can take everything waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Generic, TypeVar

__all__ = ["Pump"]

T = TypeVar("T")


class Pump(Generic[T]):
    """Runs ``source`` in a task; :meth:`take` returns every item produced so far.

    While the servicer awaits a write, the flow keeps producing; the next
    :meth:`take` then hands over all of it for one message. Nothing ever waits
    for more items than are ready. The buffer holds at most ``limit`` items,
    so a fast producer waits for a slow client instead of filling memory.

    Args:
        source: the async iterator (e.g. a ``FlowStream``); closed when the pump ends.
        limit: items buffered at most, i.e. the most one :meth:`take` returns.
    """

    __slots__ = ("_items", "_limit", "_ready", "_room", "_source", "_task")

    def __init__(self, source: AsyncIterator[T], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self._source = source
        self._items: list[T] = []
        self._limit = limit
        self._ready: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._wake)

    async def _run(self) -> None:
        source = self._source
        loop = asyncio.get_running_loop()
        async with aclosing(source):  # type: ignore[type-var]
            async for item in source:
                self._items.append(item)
                self._wake()
                if len(self._items) >= self._limit:
                    room = self._room = loop.create_future()
                    await room

    def _wake(self, _task: object = None) -> None:
        ready = self._ready
        if ready is not None:
            self._ready = None
            if not ready.done():
                ready.set_result(None)

    async def take(self) -> list[T]:
        """Wait for at least one item, then return every waiting item.

        Returns:
            The items, oldest first; an empty list once the source is exhausted.

        Raises:
            Exception: whatever the source raised, after its earlier items were taken.
        """
        if not self._items and not self._task.done():
            ready = self._ready = asyncio.get_running_loop().create_future()
            await ready
        items = self._items
        if not items:
            task = self._task
            if task.cancelled():
                raise RuntimeError("the producer task was cancelled")
            error = task.exception()
            if error is not None:
                raise error
            return items
        self._items = []
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)
        return items

    async def aclose(self) -> None:
        """Stop the producer (the source's ``finally`` blocks run) and close the source."""
        task = self._task
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as forgotten
        # A task cancelled before its first step never entered aclosing(): close here too.
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()
