"""``RedisStore``: kept streams in Redis Streams, so that any instance can resume any stream.

Each stream is a Redis Stream keyed by its id, with one entry per event whose
entry id is ``<event id>-0`` (so reading "after event n" is one ``XRANGE``),
and a hash of its record. The instance running a stream keeps its log in
memory too (its own clients read that) and writes events to Redis in
batches, read from those logs: at most one round trip every
``flush_interval`` (10 ms), so a fast stream's events go by the hundred,
and the flow's own path pays one dictionary lookup per event. Other
instances replay with ``XRANGE`` and follow live with ``XREAD BLOCK``. Each
instance holds a lease (a key it renews); a stream whose instance lost its
lease before the stream ended gets an ``UNAVAILABLE`` terminal event,
written once, atomically, by whoever notices first. Cancels travel over a
pub/sub channel to the instance running the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from llmbrick import TERMINAL_TYPES, Event, LLMBrickError, Unavailable
from llmbrick.context import new_id
from llmbrick.store import MemoryStore, StreamLog, StreamRecord

__all__ = ["RedisStore"]

_log = logging.getLogger("llmbrick.redis")


# Adds a batch of events. KEYS: one event key per run (events of one stream with
# consecutive numbers); ARGV: the trim length and the milliseconds a finished stream is
# kept, then per run: its first event's number, "1" if its last one is terminal, and
# their JSON documents joined by newlines (JSON text has none of its own). An entry
# already there (a retried batch) is skipped rather than failing the batch. One argument
# per run, not per event: packing arguments is most of what a batch costs the instance
# that sends it.
_APPEND = """
local cap = ARGV[1]
local keep = ARGV[2]
local at = 3
for i = 1, #KEYS do
  local key = KEYS[i]
  local n = tonumber(ARGV[at])
  local terminal = ARGV[at + 1]
  for doc in string.gmatch(ARGV[at + 2], '[^\\n]+') do
    redis.pcall('XADD', key, 'MAXLEN', '~', cap, n .. '-0', 'e', doc)
    n = n + 1
  end
  at = at + 3
  if terminal == '1' then
    local meta = key .. ':meta'
    redis.call('HSET', meta, 'finished', '1')
    redis.call('PEXPIRE', key, keep)
    redis.call('PEXPIRE', meta, keep)
  end
end
return #KEYS
"""

# Ends a stream whose instance is gone: appends the lost-run terminal event unless the
# stream has a terminal event already. KEYS: the event key; ARGV: the message, keep ms.
_LOST = """
local meta = KEYS[1] .. ':meta'
if redis.call('HGET', meta, 'finished') == '1' then return 0 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = 1
if #last > 0 then n = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
local event = cjson.encode({type = 'error', id = tostring(n), progress = 'ERROR',
  error = {code = 'UNAVAILABLE', message = ARGV[1]}})
redis.call('XADD', KEYS[1], n .. '-0', 'e', event)
redis.call('HSET', meta, 'finished', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', meta, ARGV[2])
return n
"""

# Store settings a --store URL may carry in its query string, and how each is read.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "lease": float,
    "flush_interval": float,
    "keep_for": float,
    "prefix": str,
    "max_events": int,
}

_LOST_MESSAGE = (
    "the instance running this stream stopped before it ended; what it stored is above, "
    "the rest of the run was lost"
)


class RedisStore(MemoryStore):
    """Kept streams in Redis, shared by every instance pointed at the same database.

    Args:
        client: a ``redis.asyncio.Redis`` client (``RedisStore.from_url`` makes one).
        prefix: the keys' prefix (several deployments can share a database).
        lease: seconds an instance's lease lasts; it renews it three times as
            often. A stream whose instance stopped renewing gets its lost-run
            end this long after the last renewal, at the latest.
        flush_interval: seconds between two writes at least. An event waits that long
            at most before other instances see it (and before it survives this
            instance); a write costs the instance about as much as a few dozen
            events, so writing every event at once would multiply its CPU per event.
        **bounds: the in-memory bounds of :class:`~llmbrick.MemoryStore`
            (``max_events`` also caps each Redis stream). Events not yet written
            (while Redis is unreachable) wait in their stream's log, so a stream
            that outgrows its log meanwhile loses its oldest unwritten events; a
            reader elsewhere then gets a clear error for the gap.
    """

    shared = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "llmbrick",
        lease: float = 10.0,
        flush_interval: float = 0.01,
        **bounds: Any,
    ) -> None:
        super().__init__(**bounds)
        if not lease > 0:
            raise ValueError(f"lease must be positive, got {lease!r}")
        if not 0 <= flush_interval < lease / 3:
            raise ValueError(
                "flush_interval must be at least 0 and under a third of the lease, "
                f"got {flush_interval!r}"
            )
        self.flush_interval = flush_interval
        self.client = client
        self.prefix = prefix
        self.lease = lease
        #: This process's id among the instances sharing the store.
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{new_id()}"
        # Logs with events not written yet, and the last event written of each log.
        self._dirty: dict[StreamLog, None] = {}
        self._written: dict[StreamLog, int] = {}
        self._records: list[StreamRecord] = []
        self._running: dict[str, StreamLog] = {}
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel_handler: Callable[[str], None] | None = None
        self._lost: Any = None
        self._reachable = True

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on ``redis://host:port/db`` (or ``rediss://`` for TLS).

        The store's own settings may ride in the query string, so that one
        ``--store`` value says everything: ``?lease=5&keep_for=600&prefix=app1``
        (the rest of the query goes to redis-py).

        Raises:
            ValueError: a setting of the store is not a number where one is needed.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {key: value for key, value in query if key in _URL_OPTIONS}
        rest = [(key, value) for key, value in query if key not in _URL_OPTIONS]
        for key, value in ours.items():
            try:
                options.setdefault(key, _URL_OPTIONS[key](value))
            except ValueError:
                raise ValueError(
                    f"the Redis store's {key} must be a number, got {value!r}"
                ) from None
        plain = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(redis.Redis.from_url(plain), **options)

    def __repr__(self) -> str:
        return f"<RedisStore {self.prefix} instance={self.instance}>"

    def _key(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{stream_id}"

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}"

    def _instance_key(self, instance: str) -> str:
        return f"{self.prefix}:instance:{instance}"

    @property
    def _channel(self) -> str:
        return f"{self.prefix}:cancel"

    async def open(self) -> None:
        """Check Redis answers, take the lease, and start the writer, renewer and listener.

        Raises:
            Unavailable: Redis cannot be reached (the message says where and why).
        """
        try:
            await self.client.ping()
            await self._renew()
        except (RedisError, OSError) as exc:
            raise Unavailable(
                f"cannot reach the Redis stream store ({_where(self.client)}): {exc}"
            ) from None
        self._lost = self.client.register_script(_LOST)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="llmbrick-redis-writer"),
            asyncio.create_task(self._renew_loop(), name="llmbrick-redis-lease"),
            asyncio.create_task(self._listen(), name="llmbrick-redis-cancels"),
        ]

    async def aclose(self) -> None:
        """Write what is pending (briefly), give up the lease and disconnect."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._flush()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self._instance_key(self.instance))
        await self.client.aclose()

    # -- writing ------------------------------------------------------------------------

    def add(self, record: StreamRecord) -> StreamLog:
        record.owner = self.instance
        log = super().add(record)
        self._records.append(record)
        self._running[record.id] = log
        self._wake.set()
        return log

    def appended(self, log: StreamLog, event: Event) -> None:
        # The writer reads the events from the log; here only which logs have new ones.
        if log not in self._dirty:
            self._dirty[log] = None
            self._wake.set()

    async def _write_loop(self) -> None:
        backoff = 0.05
        loop = asyncio.get_running_loop()
        last = -self.flush_interval
        while True:
            await self._wake.wait()
            pause = last + self.flush_interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # what comes meanwhile goes in the same write
            last = loop.time()
            self._wake.clear()
            try:
                await self._flush()
            except (RedisError, OSError) as exc:
                _reraise_cancel()
                if self._reachable:
                    _log.warning("the Redis stream store is unreachable (%s); retrying", exc)
                self._reachable = False
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self._reachable:
                _log.warning("the Redis stream store is reachable again")
            self._reachable = True
            backoff = 0.05

    async def _flush(self) -> None:
        """Write what is waiting; one at a time, so a flush returns when it is all out."""
        async with self._flushing:
            records, self._records = self._records, []
            dirty, self._dirty = self._dirty, {}
            try:
                await self._write(records, dirty)
            except BaseException:
                # Back for the next try, before what arrived meanwhile.
                self._records[:0] = records
                self._dirty = {**dirty, **self._dirty}
                raise

    async def _write(self, records: list[StreamRecord], dirty: dict[StreamLog, None]) -> None:
        if not records and not dirty:
            return
        keep = str(int(self.keep_for * 1000))
        async with self.client.pipeline(transaction=False) as pipe:
            for record in records:
                meta = self._key(record.id) + ":meta"
                fields: Any = _record_fields(record)
                pipe.hset(meta, mapping=fields)
                # Kept while it runs (the lease renewal extends it), then keep_for.
                kept = int((self.keep_for + self.lease * 3) * 1000)
                pipe.pexpire(meta, kept)
                if record.tag is not None:
                    pipe.set(self._tag_key(record.tag), record.id, px=kept)
            runs = self._runs(dirty)
            if runs:
                keys = [self._key(log.id) for log, _, _ in runs]
                args: list[Any] = [self.max_events, keep]
                for _, first, events in runs:
                    terminal = events[-1]["type"] in TERMINAL_TYPES
                    args += [first, "1" if terminal else "0", b"\n".join(map(orjson.dumps, events))]
                # EVAL, not a registered script: in a pipeline redis-py asks Redis whether
                # a registered one is loaded first, one more round trip per batch.
                pipe.eval(_APPEND, len(keys), *keys, *args)
            await pipe.execute()
        for log, first, events in runs:
            last = first + len(events) - 1
            if events[-1]["type"] in TERMINAL_TYPES:
                self._written.pop(log, None)
                self._running.pop(log.id, None)
            else:
                self._written[log] = last

    def _runs(self, dirty: dict[StreamLog, None]) -> list[tuple[StreamLog, int, list[Event]]]:
        """Each log's events not written yet: (log, the first one's number, the events)."""
        runs = []
        for log in dirty:
            written = self._written.get(log, 0)
            if log.last <= written:
                continue
            try:
                events = log.events_after(written)
            except LLMBrickError:
                # The log dropped events before Redis took them (it was unreachable for
                # long): what is left goes; a reader elsewhere gets a clear gap error.
                _log.error(
                    "stream %s lost events %d-%d before Redis could take them",
                    log.id,
                    written + 1,
                    log.first - 1,
                )
                written = log.first - 1
                events = log.events_after(written)
            runs.append((log, written + 1, events))
        return runs

    # -- lease and cancels --------------------------------------------------------------

    async def _renew(self) -> None:
        lease_ms = int(self.lease * 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._instance_key(self.instance), "1", px=lease_ms)
            for stream_id, log in self._running.items():
                key = self._key(stream_id)
                keep_ms = int((self.keep_for + self.lease * 3) * 1000)
                pipe.pexpire(key, keep_ms)
                pipe.pexpire(key + ":meta", keep_ms)
                if log.record.tag is not None:
                    pipe.pexpire(self._tag_key(log.record.tag), keep_ms)
            await pipe.execute()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self._renew()
            except (RedisError, OSError) as exc:
                _log.warning("could not renew this instance's lease in Redis: %s", exc)

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        self._cancel_handler = handler

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        # Polled rather than listen(): redis-py can hold on to a
                        # cancellation inside a blocking read, and shutdown must not wait.
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=0.5
                        )
                        _reraise_cancel()
                        if message is not None and message.get("type") == "message":
                            self._cancelled_here(message["data"])
            except (RedisError, OSError):
                _reraise_cancel()
                await asyncio.sleep(0.5)  # Redis went away: listen again when it is back

    def _cancelled_here(self, data: bytes | str) -> None:
        stream_id = data.decode() if isinstance(data, bytes) else str(data)
        if stream_id in self._running and self._cancel_handler is not None:
            self._cancel_handler(stream_id)

    async def cancel_remote(self, record: StreamRecord) -> None:
        try:
            await self.client.publish(self._channel, record.id)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach the stream store to cancel: {exc}") from None

    # -- reading ------------------------------------------------------------------------

    async def lookup(self, stream_id: str) -> StreamRecord | None:
        try:
            fields: Any = await self.client.hgetall(self._key(stream_id) + ":meta")
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach the stream store: {exc}") from None
        if not fields:
            return None
        return _record_from(stream_id, fields)

    async def tagged(self, tag: str) -> StreamRecord | None:
        try:
            found: Any = await self.client.get(self._tag_key(tag))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach the stream store: {exc}") from None
        if found is None:
            return None
        stream_id = found.decode() if isinstance(found, bytes) else str(found)
        log = self.get(stream_id)
        return log.record if log is not None else await self.lookup(stream_id)

    def remote(self, record: StreamRecord, after: int) -> AsyncIterator[Event]:
        return self._follow(record, after)

    async def _follow(self, record: StreamRecord, after: int) -> AsyncIterator[Event]:
        key = self._key(record.id)
        expected = after + 1
        cursor = f"{after}-0"  # XREAD returns what comes after it
        replaying = True
        checked = time.monotonic()
        entries: Any
        while True:
            try:
                if replaying:
                    entries = await self.client.xrange(key, min=f"{expected}-0", count=1000)
                else:
                    answer: Any = await self.client.xread({key: cursor}, count=1000, block=500)
                    entries = answer[0][1] if answer else []
            except (RedisError, OSError) as exc:
                raise Unavailable(f"the stream store went away: {exc}") from None
            for entry_id, fields in entries:
                event: Event = orjson.loads(fields[b"e"])
                seq = int(event["id"])
                if seq != expected:
                    raise _Gap(record.id, expected, seq)
                expected += 1
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                yield event
                if event["type"] == "done" or event["type"] == "error":
                    return
            if replaying:
                if len(entries) >= 1000:
                    continue  # more to replay before following live
                replaying = False
                if not entries and after > 0:
                    # Asked for more than there is: a finished stream ends with its terminal.
                    tail = await self._terminal(key)
                    if tail is not None and int(tail["id"]) <= after:
                        yield tail
                        return
            if time.monotonic() - checked >= self.lease / 3:
                checked = time.monotonic()
                await self._check_owner(record, key)

    async def _terminal(self, key: str) -> Event | None:
        last: Any = await self.client.xrevrange(key, count=1)
        if not last:
            return None
        event: Event = orjson.loads(last[0][1][b"e"])
        return event if event["type"] in ("done", "error") else None

    async def _check_owner(self, record: StreamRecord, key: str) -> None:
        if record.owner is None:
            return
        try:
            alive = await self.client.exists(self._instance_key(record.owner))
            if not alive:
                await self._lost(keys=[key], args=[_LOST_MESSAGE, int(self.keep_for * 1000)])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the stream store went away: {exc}") from None


def _reraise_cancel() -> None:
    """redis-py may turn a cancellation into a connection error: do not swallow it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Gap(LLMBrickError):
    """Events of a stream never reached Redis (it was unreachable while they were made)."""

    def __init__(self, stream_id: str, expected: int, found: int) -> None:
        super().__init__(
            f"events {expected}-{found - 1} of stream {stream_id} are not in the stream store "
            "(no longer kept, or lost while it was unreachable); resume after "
            f"{found - 1} or later",
            code="FAILED_PRECONDITION",
        )


def _record_fields(record: StreamRecord) -> dict[str, str]:
    fields = {
        "flow": record.flow,
        "policy": record.policy,
        "token": record.token,
        "created": repr(record.created),
        "owner": record.owner or "",
    }
    if record.principal is not None:
        fields["principal"] = record.principal
    if record.tag is not None:
        fields["tag"] = record.tag
    return fields


def _record_from(stream_id: str, fields: dict[bytes, bytes]) -> StreamRecord:
    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return value.decode() if value is not None else None

    return StreamRecord(
        id=stream_id,
        flow=text("flow") or "",
        principal=text("principal"),
        policy=text("policy") or "cancel",
        token=text("token") or "",
        created=float(text("created") or 0),
        owner=text("owner") or None,
        tag=text("tag"),
    )


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
