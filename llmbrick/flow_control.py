"""``SendBuffer`` and ``Pump``: what every adapter keeps between a flow and a slow client.

A flow can produce faster than its client reads. Each adapter then keeps
encoded frames waiting, and the flow must wait once enough is waiting, or
server memory grows with the client's slowness. The bound is in bytes (a
64 KiB event counts as such, not as one item), the same idea on every
transport under one name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Generic, TypeVar

__all__ = ["DEFAULT_BUFFER_BYTES", "Pump", "SendBuffer"]

T = TypeVar("T")

#: Bytes of encoded frames waiting per stream (or per WebSocket connection) by default.
DEFAULT_BUFFER_BYTES = 256 << 10


class SendBuffer(Generic[T]):
    """Items on their way out, bounded in bytes; any number of producers, one consumer.

    :meth:`put` waits while ``max_bytes`` or more are buffered, so the buffer
    holds at most ``max_bytes`` plus one item (an item larger than the bound
    still goes through, alone). :meth:`take` hands over everything waiting, for
    one write; :meth:`get` hands over one item. After :meth:`close`, takers get
    what is left, then the end (or the error given to ``close``).

    Args:
        max_bytes: the bound; at least 1.
    """

    __slots__ = (
        "_closed",
        "_error",
        "_getter",
        "_head",
        "_items",
        "_loop",
        "_putters",
        "_size",
        "max_bytes",
    )

    def __init__(self, max_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes!r}")
        self.max_bytes = max_bytes
        # Lists, not deques: an empty deque holds a 64-slot block (about 0.75 KB), and a
        # server keeps one buffer per stream or connection, mostly empty. ``get`` moves
        # ``_head`` instead of shifting the list; the list empties once all is taken.
        self._items: list[tuple[T, int] | None] = []
        self._head = 0
        self._size = 0
        self._closed = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._getter: asyncio.Future[None] | None = None
        self._putters: list[asyncio.Future[None]] = []

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting now."""
        return self._size

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def put(self, item: T, size: int) -> None:
        """Append ``item`` (``size`` bytes), first waiting while the buffer is full.

        Raises:
            RuntimeError: the buffer is closed (the consumer is gone).
        """
        while self._size >= self.max_bytes and not self._closed:
            waiter = self._loop.create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_putter()  # pass on a wakeup this producer will not use
                raise
        if self._closed:
            raise RuntimeError("the send buffer is closed")
        self._items.append((item, size))
        self._size += size
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    async def _wait(self) -> bool:
        """Wait until an item is there; False at the end."""
        while self._head == len(self._items):
            if self._closed:
                if self._error is not None:
                    raise self._error
                return False
            self._getter = getter = self._loop.create_future()
            await getter
        return True

    async def take(self) -> list[T]:
        """Every waiting item, oldest first, waiting for at least one; ``[]`` at the end.

        Raises:
            BaseException: the error given to :meth:`close`, once the items before it are taken.
        """
        if not await self._wait():
            return []
        items = [entry[0] for entry in self._items[self._head :] if entry is not None]
        self._items.clear()
        self._head = 0
        self._size = 0
        self._wake_putters()
        return items

    async def get(self) -> T | None:
        """The oldest item, waiting for one; ``None`` at the end."""
        if not await self._wait():
            return None
        items, head = self._items, self._head
        entry = items[head]
        assert entry is not None
        item, size = entry
        if head + 1 == len(items):
            items.clear()
            self._head = 0
        else:
            items[head] = None  # the consumer owns it now
            self._head = head + 1
        self._size -= size
        if self._size < self.max_bytes:
            self._wake_putters()
        return item

    def close(self, error: BaseException | None = None) -> None:
        """No more items: takers get what is left, then the end (or ``error``); putters fail."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        self._wake_putters()

    def _wake_putters(self) -> None:
        putters, self._putters = self._putters, []
        for waiter in putters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            waiter = self._putters.pop(0)  # a handful of producers at most
            if not waiter.done():
                waiter.set_result(None)
                return


class Pump(Generic[T]):
    """Drives an async iterator in its own task, encoding into a :class:`SendBuffer`.

    While the sender waits for a write, the source keeps producing into the
    buffer; the next :meth:`take` then returns all of it for one write. The
    source waits once ``max_bytes`` are buffered.

    Args:
        source: the async iterator (a ``FlowStream``); closed when the pump ends.
        encode: turns one item into what the sender writes, and its size in bytes.
        max_bytes: the buffer's bound.
    """

    __slots__ = ("_buffer", "_source", "_task")

    def __init__(
        self,
        source: AsyncIterator[object],
        encode: Callable[[object], tuple[T, int]],
        max_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self._source = source
        self._buffer: SendBuffer[T] = SendBuffer(max_bytes)
        self._task = asyncio.create_task(self._run(encode))

    async def _run(self, encode: Callable[[object], tuple[T, int]]) -> None:
        buffer = self._buffer
        error: BaseException | None = None
        try:
            async with aclosing(self._source):  # type: ignore[type-var]
                async for item in self._source:
                    frame, size = encode(item)
                    await buffer.put(frame, size)
        except asyncio.CancelledError:
            error = RuntimeError("the pump was stopped")
            raise
        except Exception as exc:
            error = exc  # handed to the consumer by take(), after the items before it
        finally:
            buffer.close(error)

    @property
    def buffer(self) -> SendBuffer[T]:
        """The buffer the source fills."""
        return self._buffer

    async def take(self) -> list[T]:
        """Everything produced and not yet taken (waits for one); ``[]`` when the source ended.

        Raises:
            Exception: whatever the source raised, after its earlier items were taken.
        """
        return await self._buffer.take()

    async def aclose(self) -> None:
        """Stop the source (its ``finally`` blocks run) and close it.

        A source with a ``disconnect(task)`` method (a ``FlowStream``) decides how
        the task reading it stops: a flow kept running after its client left runs
        on in that task, which ends when the flow does and closes the source then.
        """
        task = self._task
        if not task.done():
            disconnect = getattr(self._source, "disconnect", None)
            if disconnect is None:
                task.cancel()
            elif not disconnect(task):
                return
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as forgotten
        # A task cancelled before its first step never entered aclosing(): close here too.
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()
