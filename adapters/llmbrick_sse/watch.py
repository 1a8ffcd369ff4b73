"""Watching a streaming response's client: gone (the flow ends) or quiet (a keepalive goes out).

Thousands of streams may sit idle at once, so what each holds is kept small. Under
llmbrick's HTTP protocol the connection itself reports its loss (``ON_LOST_KEY``), so
no task waits on ``receive`` per stream; and one timer per endpoint sends the pings of
all of its streams, rather than one timer each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from litestar.types import Message, Receive, Scope, Send

from llmbrick_http import ON_LOST_KEY

__all__ = ["Leaving", "Pinger", "Watch", "next_ping"]

#: A ping may go out this fraction of the interval early (never late), so one timer pass
#: serves every stream due about then.
_SLACK = 1 / 16


def next_ping(last_write: float, now: float, interval: float) -> tuple[bool, float]:
    """Whether a keepalive is due now, and the seconds until the next check.

    A ping is due one ``interval`` after the last write (of an event or a ping),
    so a proxy with an idle timeout just above the interval never sees silence
    longer than the interval.
    """
    quiet = now - last_write
    if quiet >= interval:
        return True, interval
    return False, interval - quiet


class Leaving(Protocol):
    """What a watched stream does when its client goes away (``FlowStream``, ``ResumedStream``)."""

    def disconnect(self, task: asyncio.Task[Any]) -> bool: ...


class Watch:
    """One stream's client: ends the stream when it goes away, pings it when quiet.

    Args:
        scope: the request's scope; under llmbrick's HTTP protocol it carries the
            connection's loss hook, else a task reads ``receive`` for ``http.disconnect``.
        receive: the request's ``receive``, its body already read.
        send: where pings go (the body ``send``).
        stream, task: ``stream.disconnect(task)`` is called once if the client goes
            away before the response ends.
        ping: the keepalive frame.
        pinger: the endpoint's pinger (``None``: no pings).
    """

    __slots__ = (
        "_hook",
        "_ping",
        "_pinger",
        "_pinging",
        "_send",
        "_stream",
        "_task",
        "_watching",
        "disconnected",
        "finished",
        "last_write",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        stream: Leaving,
        task: asyncio.Task[Any],
        ping: bytes,
        pinger: Pinger | None,
    ) -> None:
        self.disconnected = False
        self.finished = False
        self.last_write = time.monotonic()
        self._send = send
        self._ping = ping
        self._stream = stream
        self._watching = task
        self._pinging: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._hook: Callable[..., None] | None = cast(dict[str, Any], scope).get(ON_LOST_KEY)
        if self._hook is not None:
            self._hook(self)  # calls the watch itself: no bound method held per stream
        else:
            self._task = asyncio.create_task(self._listen(receive))
        self._pinger = pinger
        if pinger is not None:
            pinger.add(self)

    def __call__(self) -> None:
        """The client went away."""
        if not self.finished:
            self.disconnected = True
            self._stream.disconnect(self._watching)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self()
                return

    def ping(self) -> None:
        """Send a keepalive, unless the last one is still being written."""
        self.last_write = time.monotonic()
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.get_running_loop().create_task(self._send_ping())

    async def _send_ping(self) -> None:
        message: Message = {"type": "http.response.body", "body": self._ping, "more_body": True}
        try:
            await self._send(message)
        except OSError:
            pass  # the client is gone; the watch ends the stream

    def stop(self) -> None:
        """The response is over: stop watching and pinging."""
        self.finished = True
        if self._task is not None:
            self._task.cancel()
        if self._hook is not None:
            self._hook(self, remove=True)
        if self._pinger is not None:
            self._pinger.discard(self)
        if self._pinging is not None:
            self._pinging.cancel()


class Pinger:
    """The keepalives of every open stream of one endpoint, on one timer.

    Each pass pings the streams due (a sixteenth of the interval early at most) and
    sleeps until the next one is. It serves one event loop at a time: a stream
    watched from another loop starts it afresh there.
    """

    __slots__ = ("_loop", "_timer", "_watches", "interval")

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"a ping interval is positive, got {interval!r}")
        self.interval = interval
        self._watches: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, watch: Watch) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._stop_timer()
            self._watches.clear()  # streams of a loop that is gone
            self._loop = loop
        self._watches.add(watch)
        if self._timer is None:
            self._timer = loop.call_later(self.interval * (1 - _SLACK), self._tick)

    def discard(self, watch: Watch) -> None:
        self._watches.discard(watch)
        if not self._watches:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        interval = self.interval
        slack = interval * _SLACK
        ahead = time.monotonic() + slack
        wait = interval
        for watch in self._watches:
            ping, until = next_ping(watch.last_write, ahead, interval)
            if ping:
                watch.ping()
            elif until < wait:
                wait = until
        assert self._loop is not None
        self._timer = self._loop.call_later(max(wait, slack), self._tick)
