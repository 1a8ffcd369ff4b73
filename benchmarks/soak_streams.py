"""The soak's client side: one stream at a time, over SSE, WebSocket or gRPC, checked as it goes.

``benchmarks/soak.py`` keeps many of these running; this module is what each one does.
A :class:`Plan` says which transport a stream uses, how many paced events it asks for
and what its client does:

- ``normal``: reads every event; the stream must end with ``done`` after ``count``
  ``text`` events, ids 1, 2, ... each once.
- ``disconnect``: reads ``cut`` events, then goes away without a cancel of its own: the
  SSE connection is closed, the WebSocket connection closed (a connection of its own), the
  gRPC call cancelled (``RST_STREAM``). The flow (``soak_cancel``, policy ``cancel``) must
  then be cancelled on the server, which ``soak.py`` checks from the server's counters.
- ``resume``: reads ``cut`` events, drops the connection (SSE: closed; WebSocket: the TCP
  connection aborted, no close frame; gRPC: the call cancelled), waits ``pause`` seconds
  and resumes on ``resume_on`` (any transport) with the stream id and the last event id
  it got. The events before and after must join without gap or repeat and end with ``done``.

The project's clients carry the streams (``SSEClient``, ``WebSocketClient``,
``GrpcClient``), shared through :class:`Pool` as an application would share them
(several streams per WebSocket connection and per gRPC channel, at most ``capacity`` per
``SSEClient``, whose ``httpx`` pool holds 100 connections) and retired after
``retire_after`` streams, so connections come and go as well as streams. Two things
the clients do not expose are done by hand: the SSE and gRPC clients do not say which
stream id the server gave a stream they started, so a ``resume`` stream starts over SSE
with ``httpx`` and ``httpx-sse`` (reading the ``x-llmbrick-stream-id`` header) and over
gRPC with the generated stub on the client's channel (reading the ``llmbrick-stream-id``
initial metadata); the WebSocket client has it as ``ClientStream.stream_id``. Every
resume goes through a client's ``resume(stream_id, after)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import orjson
from httpx_sse import aconnect_sse

from benchmarks.clients import request_body
from benchmarks.common import PACED
from llmbrick import Event
from llmbrick.client import EventStream, FlowClient
from llmbrick_grpc import GrpcClient
from llmbrick_grpc._generated import flow_pb2_grpc
from llmbrick_grpc.codec import decode_event, encode_request
from llmbrick_sse import SSEClient
from llmbrick_websocket import WebSocketClient

__all__ = [
    "DISCONNECT",
    "KINDS",
    "LATENESS_CAP_MS",
    "NORMAL",
    "RESUME",
    "TRANSPORTS",
    "Checker",
    "Clients",
    "Plan",
    "Pool",
    "StreamFailed",
    "Tally",
]

TRANSPORTS = ("sse", "ws", "grpc")
NORMAL = "normal"
DISCONNECT = "disconnect"
RESUME = "resume"
KINDS = (NORMAL, DISCONNECT, RESUME)
#: The flow of ``benchmarks/soak_app.py`` each kind of stream runs.
_FLOW = {NORMAL: "soak", DISCONNECT: "soak_cancel", RESUME: "soak_resume"}
#: Lateness is counted in 1 ms buckets up to this; later events land in the last one.
LATENESS_CAP_MS = 60_000

_C = TypeVar("_C", bound=FlowClient)


class StreamFailed(Exception):
    """A stream did something other than its plan allows; the message says what."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one stream does (see the module docstring for the kinds)."""

    serial: int
    transport: str
    kind: str
    count: int  # text events the flow makes before ``done``
    interval: float  # seconds between them
    cut: int = 0  # disconnect, resume: text events read before the connection goes
    resume_on: str = ""  # resume: the transport the resume goes over
    pause: float = 0.0  # resume: seconds between the drop and the resume
    own_connection: bool = False  # WebSocket: a connection for this stream alone

    @property
    def flow(self) -> str:
        """The flow of ``soak_app`` this stream runs."""
        return _FLOW[self.kind]

    def request(self) -> dict[str, Any]:
        """The request: the benchmark suite's, paced, for :attr:`flow`."""
        return request_body("llmbrick", self.count, PACED, self.interval, flow=self.flow)


@dataclass(slots=True)
class Tally:
    """What every stream adds to while it runs: events received, lateness histogram."""

    events: int = 0
    #: ``lateness[ms]``: events that arrived that many milliseconds after their due time.
    lateness: list[int] = field(default_factory=lambda: [0] * (LATENESS_CAP_MS + 1))


class Checker:
    """Checks one stream's events as they arrive; raises :class:`StreamFailed` at the first fault.

    Ids must be 1, 2, ... with none missing or repeated (across a resume too), the
    ``text`` events exactly ``count``, and the terminal event ``done``. While the
    stream is read live from its start, each ``text`` event's lateness is recorded:
    its arrival minus its due time, the first event's arrival + (id - 1) x interval
    (the flow makes event k at its start + (k - 1) x interval).
    """

    __slots__ = ("_clock", "_first", "_tally", "count", "interval", "live", "next")

    def __init__(self, count: int, interval: float, tally: Tally) -> None:
        self.count = count
        self.interval = interval
        self.next = 1  # the id due next
        #: Whether lateness is recorded (not for events replayed after a resume).
        self.live = True
        self._tally = tally
        self._first: float | None = None
        self._clock = asyncio.get_running_loop().time

    @property
    def last(self) -> int:
        """The id of the last event received (0 before the first)."""
        return self.next - 1

    def take(self, event: Event) -> bool:
        """Check the next event; True when it is the (good) terminal one."""
        number = self.next
        ident = event.get("id")
        if ident != str(number):
            raise StreamFailed(f"event id {ident!r} where {number} was due ({event['type']})")
        self.next = number + 1
        self._tally.events += 1
        kind = event["type"]
        if kind == "text":
            if number > self.count:
                raise StreamFailed(f"a text event with id {number}, past the {self.count} asked")
            if self.live:
                now = self._clock()
                if self._first is None:
                    self._first = now
                else:
                    late = now - self._first - (number - 1) * self.interval
                    index = int(late * 1000) if late > 0 else 0
                    self._tally.lateness[min(index, LATENESS_CAP_MS)] += 1
            return False
        if kind == "done":
            if number != self.count + 1:
                raise StreamFailed(f"done after {number - 1} text events, not {self.count}")
            return True
        if kind == "error":
            error = event.get("error")
            what = f"{error['code']}: {error['message'][:160]}" if error else "no error object"
            raise StreamFailed(f"error event {number}: {what}")
        raise StreamFailed(f"an event of type {kind!r}")


@dataclass(slots=True)
class _Lease(Generic[_C]):
    client: _C
    running: int = 0
    started: int = 0


class Pool(Generic[_C]):
    """Clients shared by streams: at most ``capacity`` streams on one, retired after
    ``retire_after`` streams (closed when its last stream ends), new ones made as needed.

    Attributes:
        opened, closed: clients made and closed so far.
        most: the most clients open at once.
    """

    def __init__(self, make: Callable[[], _C], capacity: int, retire_after: int) -> None:
        if capacity < 1 or retire_after < 1:
            raise ValueError("capacity and retire_after must be at least 1")
        self._make = make
        self.capacity = capacity
        self.retire_after = retire_after
        self._open: list[_Lease[_C]] = []  # those that take new streams
        self._retired: set[int] = set()  # ids of retired leases still running
        self.opened = 0
        self.closed = 0
        self.most = 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_C]:
        """A client with room for one more stream, for the duration of the block."""
        entry = next((each for each in self._open if each.running < self.capacity), None)
        if entry is None:
            entry = _Lease(self._make())
            self._open.append(entry)
            self.opened += 1
            self.most = max(self.most, self.opened - self.closed)
        entry.running += 1
        entry.started += 1
        if entry.started >= self.retire_after:
            self._open.remove(entry)
            self._retired.add(id(entry))
        try:
            yield entry.client
        finally:
            entry.running -= 1
            if not entry.running and id(entry) in self._retired:
                self._retired.discard(id(entry))
                self.closed += 1
                await entry.client.aclose()

    async def aclose(self) -> None:
        """Close every client still open (call once no stream runs)."""
        entries, self._open = self._open, []
        for entry in entries:
            self.closed += 1
            await entry.client.aclose()


class Clients:
    """The soak's clients of one gateway, and how each kind of stream uses them.

    Args:
        http: the gateway's HTTP base URL (SSE and WebSocket).
        grpc_address: its gRPC ``host:port``.
        tally: where every stream counts its events.
        sse_per_client, ws_per_connection, grpc_per_channel: streams at once on one client.
        retire_after: streams one pooled client carries before it is retired.
    """

    def __init__(
        self,
        http: str,
        grpc_address: str,
        tally: Tally,
        *,
        sse_per_client: int = 50,
        ws_per_connection: int = 10,
        grpc_per_channel: int = 100,
        retire_after: int = 200,
    ) -> None:
        self.http = http
        self.ws_url = http.replace("http://", "ws://", 1) + "/ws"
        self.grpc_address = grpc_address
        self.tally = tally
        # A silent stream sends ": ping" every 15 s; 120 s without a byte is a stall.
        self.sse = Pool(
            lambda: SSEClient(http, timeout=60.0, read_timeout=120.0),
            sse_per_client,
            retire_after,
        )
        self.ws = Pool(lambda: WebSocketClient(self.ws_url), ws_per_connection, retire_after)
        # Each client its own connection, as separate applications would have (channels to
        # one address otherwise share one connection through gRPC's global subchannel pool).
        self.grpc = Pool(
            lambda: GrpcClient(grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]),
            grpc_per_channel,
            retire_after,
        )
        #: Connections of their own made for WebSocket streams.
        self.ws_own = 0
        # For SSE streams that must learn their stream id (resume): no pool limit.
        self._raw = httpx.AsyncClient(
            base_url=http,
            timeout=httpx.Timeout(60.0, read=120.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    def pools(self) -> dict[str, Pool[Any]]:
        """The shared clients by transport."""
        return {"sse": self.sse, "ws": self.ws, "grpc": self.grpc}

    async def aclose(self) -> None:
        """Close every client (call once no stream runs)."""
        for pool in self.pools().values():
            await pool.aclose()
        await self._raw.aclose()

    async def run(self, plan: Plan) -> Checker:
        """Run ``plan``'s stream to its end; the checker tells how far it got.

        Returns when a ``normal`` or ``resume`` stream ended with a good ``done``, or
        when a ``disconnect`` stream's connection is gone.

        Raises:
            StreamFailed: the stream broke its plan.
            Exception: whatever a client raised (``Unavailable``, ...): a failed stream too.
        """
        checker = Checker(plan.count, plan.interval, self.tally)
        start = {"sse": self._sse, "ws": self._ws, "grpc": self._grpc}[plan.transport]
        stream_id = await start(plan, checker)
        if plan.kind == NORMAL:
            return checker
        if checker.last != plan.cut:
            raise StreamFailed(f"the connection went after {checker.last} events, not {plan.cut}")
        if plan.kind == DISCONNECT:
            return checker
        if stream_id is None:
            raise StreamFailed("the server gave no stream id")
        await asyncio.sleep(plan.pause)
        checker.live = False
        resume_pool: Pool[Any] = self.pools()[plan.resume_on]
        async with resume_pool.lease() as client:
            resumed: EventStream = client.resume(stream_id, checker.last)
            await _read_to_end(resumed, checker)
        return checker

    async def _sse(self, plan: Plan, checker: Checker) -> str | None:
        if plan.kind == RESUME:
            return await self._sse_raw(plan, checker)
        async with self.sse.lease() as client:
            events = client.stream(plan.flow, plan.request())
            if plan.kind == NORMAL:
                await _read_to_end(events, checker)
            else:  # closing the stream early closes its connection: no DELETE is sent
                await _read_until(events, checker, plan.cut)
        return None

    async def _sse_raw(self, plan: Plan, checker: Checker) -> str | None:
        body = orjson.dumps(plan.request())
        headers = {"content-type": "application/json"}
        async with aconnect_sse(
            self._raw, "POST", "/chat/completions", content=body, headers=headers
        ) as source:
            if source.response.status_code != 200:
                text = (await source.response.aread())[:200].decode(errors="replace")
                raise StreamFailed(f"HTTP {source.response.status_code}: {text}")
            stream_id: str | None = source.response.headers.get("x-llmbrick-stream-id")
            async for frame in source.aiter_sse():
                if not frame.data:
                    continue
                if checker.take(orjson.loads(frame.data)):
                    raise StreamFailed("the stream ended before its connection was dropped")
                if checker.last == plan.cut:
                    break  # leaving the block closes the response, and with it the connection
        return stream_id

    async def _ws(self, plan: Plan, checker: Checker) -> str | None:
        if not plan.own_connection:
            async with self.ws.lease() as client:
                await _read_to_end(client.stream(plan.flow, plan.request()), checker)
            return None
        self.ws_own += 1
        client = WebSocketClient(self.ws_url)
        try:
            stream = client.stream(plan.flow, plan.request())
            if plan.kind == NORMAL:
                await _read_to_end(stream, checker)
                return None
            async for event in stream:
                if checker.take(event):
                    raise StreamFailed("the stream ended before its connection was dropped")
                if checker.last == plan.cut:
                    break
            else:
                raise StreamFailed("the stream ended without a terminal event")
            stream_id = stream.stream_id
            connection = client.connection
            if plan.kind == RESUME and connection is not None:
                connection.transport.abort()  # a lost network: no close frame, no cancel
            # DISCONNECT: the client's close (a close frame; no cancel frame) in finally.
            return stream_id
        finally:
            await client.aclose()

    async def _grpc(self, plan: Plan, checker: Checker) -> str | None:
        async with self.grpc.lease() as client:
            if plan.kind == RESUME:
                return await _grpc_raw(client, plan, checker)
            events = client.stream(plan.flow, plan.request())
            if plan.kind == NORMAL:
                await _read_to_end(events, checker)
            else:  # closing the stream early cancels the call: no Cancel request is made
                await _read_until(events, checker, plan.cut)
        return None


async def _grpc_raw(client: GrpcClient, plan: Plan, checker: Checker) -> str | None:
    """Start ``plan`` with the generated stub on ``client``'s channel, to read the stream id."""
    stub = flow_pb2_grpc.FlowServiceStub(client.channel)
    call = stub.Stream(encode_request(plan.request()), metadata=client.metadata)
    try:
        stream_id: str | None = None
        for key, value in await call.initial_metadata() or ():
            if key == "llmbrick-stream-id" and isinstance(value, str):
                stream_id = value
        async for response in call:
            for message in response.events:
                if checker.take(decode_event(message)):
                    raise StreamFailed("the stream ended before its call was cancelled")
                if checker.last == plan.cut:
                    return stream_id
        raise StreamFailed("the call ended without a terminal event")
    finally:
        call.cancel()


async def _read_to_end(events: EventStream, checker: Checker) -> None:
    """Read ``events`` to a good terminal event (closing the stream however that ends)."""
    async with aclosing(events):
        async for event in events:
            if checker.take(event):
                return
    raise StreamFailed("the stream ended without a terminal event")


async def _read_until(events: EventStream, checker: Checker, cut: int) -> None:
    """Read ``cut`` events, then close the stream (what closing means is the transport's)."""
    async with aclosing(events):
        async for event in events:
            if checker.take(event):
                raise StreamFailed("the stream ended before its client went away")
            if checker.last == cut:
                return
    raise StreamFailed("the stream ended without a terminal event")
