"""``FlowClient``: what every llmbrick client shares, whatever its transport.

The SSE, WebSocket and gRPC clients (``llmbrick_sse.SSEClient``,
``llmbrick_websocket.WebSocketClient``, ``llmbrick_grpc.GrpcClient``) subclass
:class:`FlowClient`: they differ in how bytes travel, not in what a caller
sees. Each has ``stream(flow, request)``, ``invoke(flow, request)`` and
``list_flows()``, takes ``api_key=``, ``headers=`` and ``timeout=``, and yields
the very event dicts the server's ``FlowRuntime`` produced.

The error policy, the same on every transport:

* A server that cannot be reached raises :class:`~llmbrick.Unavailable`, with
  the transport's own error chained as ``__cause__``: connection refused, a
  name that does not resolve, a TLS handshake that fails, no answer within the
  connect timeout, something that is not an llmbrick server answering, or the
  connection dropped before the stream's first event.
* Everything else ends the stream with exactly one terminal ``error`` event,
  never an exception: what the server reported (unknown flow, invalid request,
  wrong API key, overload, a flow failing midway), a connection lost after the
  first event (``UNAVAILABLE``), the client's own timeout once the server had
  taken the stream (``DEADLINE_EXCEEDED``), and closing the client while the
  stream runs (``CANCELLED``).

So a caller handles one exception (the server is not there) and reads every
other outcome from the last event, or from ``invoke(...)["error"]``.

This module is transport-free: it imports pydantic and the standard library only.
"""

from __future__ import annotations

import json
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeAlias

from pydantic import BaseModel

from .errors import (
    Cancelled,
    DeadlineExceeded,
    ErrorCode,
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .events import TERMINAL_TYPES, ErrorInfo, Event
from .stream import InvokeResult, collect_events

__all__ = [
    "EventStream",
    "FlowClient",
    "FlowRequest",
    "build_payload",
    "error_in_body",
    "exception_for",
    "tls_context",
]

#: A flow's request as a client takes it: a dict as an SSE client would POST it, or a
#: pydantic model such as ``ChatRequest`` (only the fields that were set are sent).
FlowRequest: TypeAlias = Mapping[str, Any] | BaseModel

# A header name is an HTTP token; gRPC metadata keys are a subset once lower-cased.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

_CLASSES: dict[str, type[LLMBrickError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidRequest,
    ErrorCode.NOT_FOUND: FlowNotFound,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.CANCELLED: Cancelled,
}


class EventStream(Protocol):
    """What ``stream()`` returns: an async iterator of the events, the terminal one last.

    ``aclose()`` leaves early; a stream still running on the server is cancelled there.
    """

    def __aiter__(self) -> AsyncIterator[Event]:
        """The events, in order."""
        ...

    def __anext__(self) -> Awaitable[Event]:
        """The next event (``StopAsyncIteration`` after the terminal one)."""
        ...

    def aclose(self) -> Awaitable[None]:
        """Stop reading; the server cancels the flow if it still runs."""
        ...


def build_payload(flow: str | None, request: FlowRequest) -> dict[str, Any]:
    """The JSON object a client sends for ``flow``: ``request`` with ``flow`` set.

    Args:
        flow: the flow's name; ``None`` keeps the request's own ``flow`` field (the
            server's ``default`` flow when there is none).
        request: a mapping, copied, or a pydantic model, dumped with its wire
            aliases and only the fields that were set (so server defaults apply).
    """
    if isinstance(request, BaseModel):
        payload = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        payload = dict(request)
    if flow is not None:
        payload["flow"] = flow
    return payload


def error_in_body(body: bytes | str) -> ErrorInfo | None:
    """The ``error`` of llmbrick's JSON error body, ``{"error": {"code", "message", ...}}``.

    ``None`` when ``body`` is anything else: then whatever answered (a proxy, a
    web framework without llmbrick) is not an llmbrick server reporting an error.
    """
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (
        type(error) is dict
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        return None
    found: ErrorInfo = error  # type: ignore[assignment]  # checked above
    return found


def exception_for(info: ErrorInfo) -> LLMBrickError:
    """The llmbrick exception for an error the server reported, of its code's class.

    Clients raise it where there is no stream to end (``list_flows``); an unknown
    code (one a flow made up) becomes an ``INTERNAL`` error keeping it in ``details``.
    """
    code = info["code"]
    message = info["message"]
    details = info.get("details")
    if code == ErrorCode.RESOURCE_EXHAUSTED:
        found = details if isinstance(details, dict) else {}
        retry = found.get("retryAfter")
        limit = found.get("limit")
        return Overloaded(
            message,
            retry_after=retry if isinstance(retry, int | float) else 1.0,
            limit=limit if isinstance(limit, str) else "server",
        )
    cls = _CLASSES.get(code)
    if cls is not None:
        return cls(message, details=details)
    try:
        return LLMBrickError(message, code=code, details=details)
    except ValueError:  # a code a flow made up: keep it in the details
        return LLMBrickError(message, details={"code": code, "details": details})


def tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext | None:
    """A client TLS context trusting ``ca_file`` and presenting ``cert_file``, if either is given.

    ``None`` when neither is: the transport's default (the system's CAs) applies.

    Raises:
        ValueError: ``key_file`` without ``cert_file``.
        OSError: a file cannot be read (``ssl.SSLError`` if it is not PEM).
    """
    if key_file is not None and cert_file is None:
        raise ValueError("key_file is the private key of cert_file: give cert_file too")
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _next_number(last: Event | None) -> int:
    """The id the runtime would give the event after ``last`` (ids count from 1)."""
    ident = last.get("id") if last is not None else None
    return int(ident) + 1 if isinstance(ident, str) and ident.isdigit() else 1


class FlowClient(ABC):
    """The client API every transport shares; see the module docstring for the error policy.

    A client opens its connection on first use and reuses it; use it as
    ``async with Client(...) as client:`` or call :meth:`aclose`. Streams may
    run concurrently from several tasks.

    Args:
        api_key: sent as ``Authorization: Bearer <key>`` (an HTTP header, or gRPC
            metadata), as ``llmbrick.ApiKeyAuth`` expects; it replaces an
            ``authorization`` given in ``headers``.
        headers: sent with every request: HTTP headers (for WebSocket, on the
            handshake) or gRPC metadata. Names are sent in lower case.
        timeout: seconds; each transport says where it applies (``None``: no limit).

    Raises:
        ValueError: a header name or value cannot be sent.
    """

    #: The transport's name, for messages.
    transport: ClassVar[str] = "llmbrick"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        sent = {
            _header_name(name): _header_value(name, value)
            for name, value in (headers or {}).items()
        }
        if api_key is not None:
            if not api_key or not api_key.isprintable() or " " in api_key:
                raise ValueError("an API key is one word of printable characters")
            sent["authorization"] = f"Bearer {api_key}"
        #: What goes with every request, the API key's header included.
        self.headers: dict[str, str] = sent
        self.timeout = timeout
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called; a closed client cannot be used again."""
        return self._closed

    @abstractmethod
    def stream(self, flow: str | None, request: FlowRequest) -> EventStream:
        """The events of ``flow`` run on ``request``; the last is ``done`` or ``error``.

        Nothing is sent until the first event is asked for. Leaving early
        (``aclose()``, or ``async with contextlib.aclosing(...)``) cancels the flow.

        Args:
            flow: the flow's name; ``None`` keeps the request's ``flow`` field.
            request: the flow's request (see :data:`FlowRequest`).

        Raises:
            Unavailable: (while iterating) no server could be reached.
        """

    async def invoke(self, flow: str | None, request: FlowRequest) -> InvokeResult:
        """Run ``flow`` to its end: every event, the text joined, and the error if it failed.

        As ``FlowRuntime.invoke``: a flow failing midway still returns what it
        produced, with ``error`` set.

        Raises:
            Unavailable: no server could be reached.
        """
        return await self._collect(self.stream(flow, request))

    @staticmethod
    async def _collect(stream: EventStream) -> InvokeResult:
        """Read ``stream`` to its end (closing it however that ends) into an ``InvokeResult``."""
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        return collect_events(events)

    @abstractmethod
    def resume(self, stream_id: str, after: int = 0, *, token: str | None = None) -> EventStream:
        """The events of a kept stream after event ``after``, then live until its end.

        A server with a store keeps every stream (its id is in the
        ``x-llmbrick-stream-id`` header, ``llmbrick-stream-id`` metadata, or the
        WebSocket ``started`` reply); any transport resumes a stream started on any
        other. What the server refuses (an unknown or someone else's stream: the
        same ``NOT_FOUND``) is the stream's terminal event, as for :meth:`stream`.

        Args:
            stream_id: the server's stream id.
            after: the last event id received (0: from the start).
            token: the stream's token, instead of this client's credentials.
        """

    @abstractmethod
    async def cancel(self, stream_id: str, *, token: str | None = None) -> None:
        """End a stream now with a ``CANCELLED`` terminal event; what it produced is kept.

        Raises:
            Unavailable: no server could be reached.
            LLMBrickError: the server refused (``NOT_FOUND`` for an unknown stream).
        """

    @abstractmethod
    async def list_flows(self) -> list[dict[str, Any]]:
        """The server's flows: ``[{name, description, requestSchema}]``, as ``GET /flows``.

        Raises:
            Unavailable: no server could be reached.
            LLMBrickError: the server refused (e.g. ``Unauthenticated``); there is
                no stream to end, so this is the one place its errors are raised.
        """

    async def aclose(self) -> None:
        """Close the connections; streams still running end with a ``CANCELLED`` event."""
        if not self._closed:
            self._closed = True
            await self._close()

    @abstractmethod
    async def _close(self) -> None:
        """Release the transport's connections (called once, by :meth:`aclose`)."""

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; make a new one")

    @staticmethod
    def error_event(error: ErrorInfo, number: int = 1) -> Event:
        """A terminal ``error`` event numbered ``number``, stamped as the runtime stamps it.

        A stream the server refused before it started is this event with number 1,
        on every transport, as ``FlowRuntime.run`` yields it.
        """
        return {"type": "error", "error": error, "id": str(number), "progress": "ERROR"}

    async def _guard(self, events: AsyncGenerator[Event]) -> AsyncGenerator[Event]:
        """Apply the error policy to a transport's raw events.

        The raw generator yields the server's events, and an unstamped
        ``{"type": "error", "error": ...}`` for an error the server reported
        outside the stream (an HTTP status, gRPC trailers); it raises
        ``Unavailable`` when the server is out of reach or the connection is
        lost, and any other ``LLMBrickError`` for what cut the stream short
        otherwise (``DeadlineExceeded`` for the client's timeout).
        """
        self._check_open()
        last: Event | None = None
        failure: LLMBrickError | None = None
        async with aclosing(events):
            try:
                async for event in events:
                    if "id" not in event and event["type"] == "error":
                        event = self.error_event(event["error"], _next_number(last))
                    last = event
                    yield event
                    if event["type"] in TERMINAL_TYPES:
                        return
            except LLMBrickError as exc:
                failure = exc
        if failure is None:
            # A clean end of the body or call without the terminal event: a server or a
            # proxy between closed it early, which is a lost connection as far as we know.
            failure = Unavailable(
                f"the {self.transport} connection closed before the stream's terminal event"
            )
        yield self._ending(failure, last)

    def _ending(self, failure: LLMBrickError, last: Event | None) -> Event:
        """The terminal event of a stream that ``failure`` cut off after ``last``.

        Raises:
            Unavailable: ``failure`` itself, when it is one and nothing arrived:
                no server answered, so there is no stream to end.
        """
        number = _next_number(last)
        if self._closed:
            closed = Cancelled("the client was closed before the stream ended")
            return self.error_event(closed.to_info(), number)
        if last is None and isinstance(failure, Unavailable):
            raise failure
        return self.error_event(failure.to_info(), number)


def _header_name(name: str) -> str:
    if not name or not set(name) <= _TOKEN:
        raise ValueError(f"header name {name!r} is not an HTTP token")
    return name.lower()


def _header_value(name: str, value: str) -> str:
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"header {name!r}: the value must be a string on one line")
    return value
