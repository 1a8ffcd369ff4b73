"""Stream stores: what keeps a stream's events so a client can resume it after a drop.

A :class:`StreamLog` is one stream's events in order, in memory, with readers
following it live. A :class:`StreamStore` keeps the logs of the streams this
process runs, bounded in events, bytes and time; :class:`MemoryStore` is the
one-process store, and a shared store (Redis, in the ``llmbrick_redis``
package) also writes every event where other instances can replay and follow
it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic_core import PydanticSerializationError, from_json, to_json

from .context import new_id
from .errors import ErrorCode, FlowNotFound, LLMBrickError
from .events import Event

__all__ = [
    "POLICIES",
    "MemoryStore",
    "StreamLog",
    "StreamRecord",
    "StreamStore",
    "event_size",
]

_log = logging.getLogger("llmbrick.store")

#: What happens to a flow when its last client goes away.
POLICIES = ("cancel", "grace", "continue")

# Events a producer appends directly to a log between two counts (see StreamLog.events).
_BATCH = 32


@dataclass(slots=True)
class StreamRecord:
    """What a store knows about a stream besides its events.

    Attributes:
        id: the stream id.
        flow: the flow's name.
        principal: who started it (``None`` without authentication); only they may resume it.
        token: a secret that lets anyone holding it resume or cancel the stream
            (what a browser's ``EventSource`` URL carries instead of an API key).
        policy: the disconnect policy in force.
        created: wall-clock time of the start.
        owner: the instance running it (shared stores).
        tag: what a client can find it by (its request context's ``tag``), if anything.
    """

    id: str
    flow: str
    principal: str | None
    policy: str = "cancel"
    token: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    owner: str | None = None
    tag: str | None = None

    def allows(self, principal: str | None, token: str | None) -> bool:
        """Whether a caller (its principal id, or a token it presents) may see this stream."""
        if token is not None:
            return token == self.token
        return principal == self.principal


def event_size(event: Event) -> int:
    """A cheap estimate of an event's encoded size in bytes (for the store's bounds)."""
    if len(event) == 4:
        text = event.get("text")
        if type(text) is str:
            # A stamped text event, most of any stream: its type, id and progress are
            # short strings, together about 70 bytes with the keys and the framing.
            return 70 + len(text)
    size = 16
    for key, value in event.items():
        size += len(key) + 4
        if type(value) is str:
            size += len(value)
        else:
            size += _value_size(value, 0)
    return size


def _value_size(value: Any, depth: int) -> int:
    if type(value) is str:
        return len(value) + 2
    if type(value) is dict and depth < 8:
        return sum(len(k) + 4 + _value_size(v, depth + 1) for k, v in value.items()) + 2
    if type(value) is list and depth < 8:
        return sum(_value_size(v, depth + 1) for v in value) + 2
    return 8


class _Dropped(LLMBrickError):
    """A reader asked for events the store no longer has."""

    code = ErrorCode.FAILED_PRECONDITION


class StreamLog:
    """One stream's events, in memory, with readers following it live.

    The log keeps at most ``max_events`` events and ``max_bytes`` bytes by
    dropping the oldest (down to a sixteenth under the bound); a reader that
    asks for a dropped event gets a clear error. While a reader is attached
    and behind by ``window`` bytes, the producer waits (:meth:`room`), so a
    slow client holds back the flow instead of making it drop what the client
    has not read.

    Args:
        record: the stream's record.
        max_events, max_bytes: what the log keeps at most.
        window: bytes an attached reader may be behind before the producer waits.
    """

    __slots__ = (
        "_base",
        "_ends",
        "_events",
        "_first",
        "_packed",
        "_readers",
        "_room",
        "_total",
        "_waiters",
        "due",
        "finished",
        "finished_at",
        "max_bytes",
        "max_events",
        "record",
        "window",
    )

    def __init__(self, record: StreamRecord, max_events: int, max_bytes: int, window: int) -> None:
        self.record = record
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.window = window
        # The same list for the log's life (cleared and refilled, never replaced): the
        # runtime appends to it directly (see `events`).
        self._events: list[Event] = []
        # A finished log nobody reads is kept as one JSON document instead (see pack).
        self._packed: tuple[bytes, int] | None = None
        # Running byte totals: _ends[i] counts every event up to and including _events[i];
        # _base counts the events already dropped. An array: no object per event. Events
        # past the end of _ends were appended directly and are not counted yet (settle).
        self._ends = array("q")
        self._total = 0
        self._base = 0
        self._first = 1  # the sequence number of _events[0]
        self._readers: list[_Reader] = []
        # One future per waiting reader: a reader cancelled while it waits must not
        # cancel the others' wait (a shared future would be cancelled with it).
        self._waiters: list[asyncio.Future[None]] = []
        self._room: asyncio.Future[None] | None = None
        self.finished = False
        self.finished_at: float | None = None
        self.due = _BATCH

    @property
    def events(self) -> list[Event]:
        """The kept events, oldest first: a fast producer's way in.

        A producer may append in-progress events to this list itself, with no Python
        call per event, as long as it calls :meth:`settle` whenever the list's length
        reaches :attr:`due` (every few dozen events, or at once while a reader waits
        for the next one). Until then the new events are readable but not yet counted
        against the log's bounds. The terminal event goes through :meth:`append`.
        """
        return self._events

    @property
    def id(self) -> str:
        """The stream id."""
        return self.record.id

    @property
    def last(self) -> int:
        """The sequence number of the last event (0 before the first)."""
        if self._packed is not None:
            return self._first + self._packed[1] - 1
        return self._first + len(self._events) - 1

    @property
    def first(self) -> int:
        """The oldest sequence number still kept."""
        return self._first

    @property
    def bytes(self) -> int:
        """Bytes kept (estimated), the events appended directly to :attr:`events` included."""
        self.settle()
        return self._total - self._base

    @property
    def readers(self) -> int:
        """Readers following the log now."""
        return len(self._readers)

    def append(self, event: Event, size: int | None = None) -> None:
        """Add the next event (``size`` bytes, estimated if not given); the terminal one
        finishes the log."""
        if self.finished:
            return
        self.settle()
        events = self._events
        total = self._total = self._total + (event_size(event) if size is None else size)
        events.append(event)
        self._ends.append(total)
        kind = event["type"]
        if kind == "done" or kind == "error":
            self.finished = True
            self.finished_at = time.monotonic()
        elif len(events) > self.max_events or total - self._base > self.max_bytes:
            self._trim()
        self._woken()

    def settle(self) -> None:
        """Count the events appended directly to :attr:`events` against the bounds (the
        oldest go if the log is over them) and wake the readers waiting for them."""
        events = self._events
        ends = self._ends
        if len(ends) == len(events):
            return  # nothing new (a reader that waits has nothing to be woken for)
        total = self._total
        for event in events[len(ends) :]:
            text = event.get("text")
            if type(text) is str and len(event) == 4:
                total += 70 + len(text)  # event_size's estimate, without the call
            else:
                total += event_size(event)
            ends.append(total)
        self._total = total
        if len(events) > self.max_events or total - self._base > self.max_bytes:
            self._trim()
        self._woken()

    def _woken(self) -> None:
        # Everything is counted: the next count is due a batch from now.
        self.due = len(self._events) + _BATCH
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _trim(self) -> None:
        # Drop the oldest events beyond the bounds, but never the newest one; a sixteenth
        # more than needed, so that a long stream at its bound does not move every kept
        # event at every append.
        ends = self._ends
        count = len(self._events)
        max_events = self.max_events - self.max_events // 16
        max_bytes = self.max_bytes - self.max_bytes // 16
        # The fewest oldest events to drop: the count bound directly, the byte bound by
        # bisecting the running totals (kept bytes after dropping d: total - ends[d - 1]).
        drop = count - max_events
        over = self._total - max_bytes
        if over > self._base:
            drop = max(drop, bisect_left(ends, over) + 1)
        drop = min(drop, count - 1)
        if drop > 0:
            self._base = ends[drop - 1]
            del self._events[:drop]
            del ends[:drop]
            self._first += drop

    def pack(self) -> bool:
        """Keep a finished log nobody reads as one JSON document; True if it now is.

        Thousands of finished streams kept for resumes would otherwise hold millions of
        event dicts that every full garbage collection visits (a stall of the event loop
        that grows with the store) at several times their encoded size. The first reader
        unpacks the log, decoded as any client would decode it (JSON types).
        """
        if self._packed is not None:
            return True
        if not self.finished or self._readers:
            return False
        try:
            self._packed = (to_json(self._events), len(self._events))
        except PydanticSerializationError:
            return False  # something only Python can hold: it stays as it is
        self._events.clear()
        return True

    def _unpack(self) -> list[Event]:
        packed = self._packed
        if packed is not None:
            self._events.extend(from_json(packed[0]))
            self._packed = None
        return self._events

    def behind(self) -> int:
        """Bytes the slowest attached reader has not read yet."""
        readers = self._readers
        if not readers or not self._events:
            return 0
        self.settle()
        if len(readers) == 1:
            index = readers[0].next - self._first
        else:
            index = min(reader.next for reader in readers) - self._first
        if index >= len(self._events):
            return 0
        return self._total - (self._ends[index - 1] if index > 0 else self._base)

    async def room(self) -> None:
        """Wait while an attached reader is more than ``window`` bytes behind (or a wake)."""
        if self.behind() > self.window and not self.finished:
            room = self._room
            if room is None or room.done():
                room = self._room = asyncio.get_running_loop().create_future()
            await room

    def wake(self) -> None:
        """Wake a producer waiting for room (it is being stopped)."""
        room = self._room
        if room is not None and not room.done():
            self._room = None
            room.set_result(None)

    def _moved(self) -> None:
        room = self._room
        if room is not None and not room.done() and self.behind() <= self.window:
            self._room = None
            room.set_result(None)

    def events_after(self, after: int) -> list[Event]:
        """Every kept event after sequence number ``after``.

        Raises:
            LLMBrickError: ``FAILED_PRECONDITION`` when some of them were dropped.
        """
        index = after + 1 - self._first
        if index < 0:
            raise _Dropped(
                f"events {after + 1}-{self._first - 1} of stream {self.id} are no longer kept; "
                f"resume after {self._first - 1} or later"
            )
        return self._unpack()[index:]

    def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events after ``after``, then new ones as they come, until the terminal one."""
        return _Reader(self, after + 1).iterate()

    def _wait(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.due = 0  # the producer settles at its next event, which wakes this reader
        return waiter


class _Reader:
    """One reader of a log; while attached, it holds back a producer that runs far ahead."""

    __slots__ = ("log", "next")

    def __init__(self, log: StreamLog, next_seq: int) -> None:
        if next_seq < 1:
            raise ValueError(f"a stream resumes after an event id >= 0, got {next_seq - 1}")
        self.log = log
        self.next = next_seq

    async def iterate(self) -> AsyncIterator[Event]:
        log = self.log
        log._unpack()
        log._readers.append(self)
        try:
            while True:
                batch = log.events_after(self.next - 1)
                if batch:
                    for event in batch:
                        yield event
                        # Counted once the consumer asks for more: what it holds is unread.
                        self.next += 1
                        if log._room is not None:
                            log._moved()
                        if event["type"] == "done" or event["type"] == "error":
                            return
                elif log.finished:
                    # Asked for more than the stream made: it ends with its terminal event.
                    yield log._events[-1]
                    return
                else:
                    await log._wait()
        finally:
            log._readers.remove(self)
            log._moved()


class StreamStore(ABC):
    """Where a runtime keeps its streams' events; see :class:`MemoryStore`.

    Attributes:
        shared: True when several instances see the same streams (so any of
            them can resume any stream), False for a one-process store.
    """

    shared: bool = False

    @abstractmethod
    def add(self, record: StreamRecord) -> StreamLog:
        """Keep a new stream; returns its log (which the runtime appends to)."""

    @abstractmethod
    def get(self, stream_id: str) -> StreamLog | None:
        """This process's log of a stream, if it has one."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (shared stores); raise ``Unavailable`` with a clear message if impossible."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Flush and disconnect."""

    def appended(self, log: StreamLog, event: Event) -> None:  # noqa: B027 - optional hook
        """Called after each append (a shared store persists it, batched)."""

    async def lookup(self, stream_id: str) -> StreamRecord | None:
        """The record of a stream this process does not have (shared stores)."""
        return None

    async def tagged(self, tag: str) -> StreamRecord | None:
        """The record of the newest kept stream started with ``tag``, if any (a store
        that does not index tags finds none)."""
        return None

    def remote(self, record: StreamRecord, after: int) -> AsyncIterator[Event]:
        """Replay and follow a stream another instance runs (shared stores).

        Raises:
            FlowNotFound: this store is not shared.
        """
        raise FlowNotFound(f"no stream {record.id}")

    async def cancel_remote(self, record: StreamRecord) -> None:  # noqa: B027 - optional hook
        """Ask the instance running a stream to cancel it (shared stores)."""

    def on_cancel(self, handler: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Register who cancels a local stream that another instance asked to cancel."""


_MEMORY_OPTIONS: dict[str, type[int] | type[float]] = {
    "keep_for": float,
    "max_events": int,
    "max_bytes": int,
    "max_total_bytes": int,
    "window": int,
}


class MemoryStore(StreamStore):
    """Streams kept in this process's memory: bounded, oldest first out.

    Args:
        max_events: events kept per stream (the oldest go first).
        max_bytes: bytes kept per stream (estimated).
        max_total_bytes: bytes kept for all streams; finished streams are
            forgotten oldest first when over it.
        keep_for: seconds a finished stream stays resumable.
        window: bytes a live client may be behind before its flow waits.
    """

    def __init__(
        self,
        *,
        max_events: int = 10_000,
        max_bytes: int = 4 << 20,
        max_total_bytes: int = 256 << 20,
        keep_for: float = 300.0,
        window: int = 256 << 10,
    ) -> None:
        for name, value in (
            ("max_events", max_events),
            ("max_bytes", max_bytes),
            ("max_total_bytes", max_total_bytes),
            ("keep_for", keep_for),
            ("window", window),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.keep_for = keep_for
        self.window = window
        self._logs: OrderedDict[str, StreamLog] = OrderedDict()
        self._tags: dict[str, str] = {}  # tag -> the newest stream started with it
        self._swept = time.monotonic()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """A store from ``memory`` with its settings in the query: ``memory?keep_for=60``.

        Raises:
            ValueError: not a ``memory`` URL, an unknown setting, or a value that is not
                a positive number (the message names it and the settings there are).
        """
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or parts.path != "memory" or parts.fragment:
            raise ValueError(
                f"a memory store is written memory or memory?SETTING=VALUE, got {url!r}"
            )
        options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            kind = _MEMORY_OPTIONS.get(key)
            if kind is None:
                raise ValueError(
                    f"the memory store has no setting {key!r}; it takes "
                    + ", ".join(_MEMORY_OPTIONS)
                )
            try:
                options[key] = kind(value)
            except ValueError:
                raise ValueError(
                    f"the memory store's {key} must be a positive {kind.__name__}, got {value!r}"
                ) from None
        return cls(**options)

    def __len__(self) -> int:
        return len(self._logs)

    def add(self, record: StreamRecord) -> StreamLog:
        self._sweep()
        log = StreamLog(record, self.max_events, self.max_bytes, self.window)
        self._logs[record.id] = log
        if record.tag is not None:
            self._tags[record.tag] = record.id
        return log

    def get(self, stream_id: str) -> StreamLog | None:
        log = self._logs.get(stream_id)
        finished_at = log.finished_at if log is not None else None
        if finished_at is not None and time.monotonic() - finished_at > self.keep_for:
            self._forget(stream_id)
            return None
        return log

    async def tagged(self, tag: str) -> StreamRecord | None:
        stream_id = self._tags.get(tag)
        log = self.get(stream_id) if stream_id is not None else None
        return log.record if log is not None else None

    def _forget(self, stream_id: str) -> None:
        log = self._logs.pop(stream_id)
        tag = log.record.tag
        if tag is not None and self._tags.get(tag) == stream_id:
            del self._tags[tag]

    def _sweep(self) -> None:
        # At most once a second: the budget may be overrun for that long, never more.
        now = time.monotonic()
        if now - self._swept < 1.0:
            return
        self._swept = now
        expired = []
        for key, log in self._logs.items():
            if log.finished_at is not None:
                if now - log.finished_at > self.keep_for:
                    expired.append(key)
                else:
                    log.pack()
        for key in expired:
            self._forget(key)
        total = self._total()
        if total <= self.max_total_bytes:
            return
        for key, log in list(self._logs.items()):  # oldest first
            if log.finished and not log.readers:
                total -= log.bytes
                self._forget(key)
                if total <= self.max_total_bytes:
                    return
        # Running streams stay whole: their own bounds keep each one small.
        _log.warning("the stream store is over its %d-byte budget", self.max_total_bytes)

    def _total(self) -> int:
        return sum(log.bytes for log in self._logs.values())
