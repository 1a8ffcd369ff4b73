"""``RequestContext``: who is calling, how, and under which request id, on any transport.

Every adapter builds one per request (an HTTP request, a WebSocket connection,
a gRPC call) from what its transport carries: peer address, headers or
metadata, a deadline. The runtime authenticates it, stamps the stream id on it
and makes it visible to the flow and its bricks through :func:`current_context`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

__all__ = ["Headers", "Principal", "RequestContext", "current_context", "new_id", "request_id_for"]

# A request id a client sends is echoed into logs and headers: keep it short and printable.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

_T = TypeVar("_T")

_current: ContextVar[RequestContext | None] = ContextVar("llmbrick_context", default=None)


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive headers (HTTP) or metadata (gRPC).

    Names are compared in lower case. A name sent several times keeps every
    value (:meth:`get_all`); item access gives them joined with ``", "``, as
    HTTP folds repeated headers.
    """

    __slots__ = ("_items", "_raw")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        grouped: dict[str, list[str]] = {}
        for name, value in pairs:
            grouped.setdefault(name.lower(), []).append(value)
        self._items: dict[str, list[str]] | None = grouped
        self._raw: Sequence[tuple[bytes, bytes]] = ()

    @classmethod
    def from_raw(cls, raw: Sequence[tuple[bytes, bytes]]) -> Headers:
        """Headers over the raw pairs an HTTP server hands over (as an ASGI scope has them).

        Nothing is copied or decoded until asked for: a connection that stays
        open for hours keeps only the server's own list, and a request whose
        handler reads two headers decodes two.
        """
        headers = cls.__new__(cls)
        headers._items = None
        headers._raw = raw
        return headers

    def _grouped(self) -> dict[str, list[str]]:
        items = self._items
        if items is None:
            items = {}
            for name, value in self._raw:
                items.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        return items

    def _values(self, name: str) -> list[str]:
        if self._items is not None:
            return self._items.get(name.lower(), [])
        key = name.lower().encode("latin-1", "replace")
        return [v.decode("latin-1") for n, v in self._raw if n == key or n.lower() == key]

    def __getitem__(self, name: str) -> str:
        values = self._values(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, /, default: str | _T) -> str | _T: ...
    def get(self, name: str, /, default: object = None) -> object:
        # Mapping.get would scan twice and raise KeyError for every absent header.
        values = self._values(name)
        return ", ".join(values) if values else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._values(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._grouped())

    def __len__(self) -> int:
        return len(self._grouped())

    def get_all(self, name: str) -> list[str]:
        """Every value sent under ``name``, in order (empty if none)."""
        return list(self._values(name))

    def __repr__(self) -> str:
        # Values may hold credentials: show the names only.
        return f"Headers({sorted(self._grouped())!r})"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        id: a name safe to log and to key limits on (never the credential itself).
        scopes: what the caller may do; flows registered with ``allow=`` check them.
        data: anything else the authenticator wants flows to see.
    """

    id: str
    scopes: frozenset[str] = frozenset()
    data: Mapping[str, Any] = field(default_factory=dict)

    def allowed(self, allow: frozenset[str]) -> bool:
        """Whether this principal's id or one of its scopes is in ``allow``."""
        return self.id in allow or not self.scopes.isdisjoint(allow)


class RequestContext:
    """One request as the runtime sees it, whatever the transport.

    Args:
        transport: ``"sse"``, ``"websocket"``, ``"grpc"``, ``"openai"``, ``"python"``, ...
        headers: HTTP headers or gRPC metadata.
        peer: the client's address as the transport reports it.
        deadline: ``time.monotonic()`` value by which the client wants the stream done
            (its transport enforces it, as gRPC does; flows may read it to budget work).
        credentials: a bearer token the adapter found outside the ``Authorization``
            header (a WebSocket subprotocol, a first frame); see :meth:`bearer_token`.
        request_id: the id to use (default: :func:`request_id_for` the headers).

    Attributes:
        request_id: the client's ``x-request-id`` when it sent a sane one, else a new id.
        principal: set once authenticated.
        stream_id: set by the runtime when a stream starts.
        flow: the flow's name, once known.
        tag: what a client can find this request's kept stream by later, set by an
            adapter before the stream starts (the AI SDK's chat id; see
            :meth:`FlowRuntime.find`).
    """

    __slots__ = (
        "_stream",
        "credentials",
        "deadline",
        "flow",
        "headers",
        "peer",
        "principal",
        "request_id",
        "stream_id",
        "tag",
        "transport",
    )

    def __init__(
        self,
        transport: str = "python",
        *,
        headers: Headers | Iterable[tuple[str, str]] | Mapping[str, str] = (),
        peer: str | None = None,
        deadline: float | None = None,
        credentials: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.transport = transport
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.peer = peer
        self.deadline = deadline
        self.credentials = credentials
        self.request_id = request_id if request_id is not None else request_id_for(self.headers)
        self.principal: Principal | None = None
        self.stream_id: str | None = None
        self.flow: str | None = None
        self.tag: str | None = None
        self._stream: Any = None  # the FlowStream, once started (for brick hooks)

    def __repr__(self) -> str:
        who = self.principal.id if self.principal is not None else "anonymous"
        return f"<RequestContext {self.transport} {self.request_id} {who}>"

    @property
    def caller(self) -> str:
        """Who per-caller limits count against: the principal, else the peer's host."""
        if self.principal is not None:
            return self.principal.id
        if self.peer:
            host = self.peer.rsplit(":", 1)[0] if self.peer.count(":") == 1 else self.peer
            if host.startswith("[") and "]" in host:
                host = host[1 : host.index("]")]
            return f"peer:{host}"
        return "anonymous"

    def bearer_token(self) -> str | None:
        """The credential presented: ``Authorization: Bearer <token>``, else :attr:`credentials`."""
        value = self.headers.get("authorization")
        if value is not None:
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return self.credentials

    def time_left(self) -> float | None:
        """Seconds until the client's deadline (negative once past), or ``None``."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def derive(self, transport: str) -> RequestContext:
        """A copy for another request on the same connection (a new WebSocket stream)."""
        child = RequestContext(
            transport,
            headers=self.headers,
            peer=self.peer,
            deadline=self.deadline,
            credentials=self.credentials,
            request_id=self.request_id,
        )
        child.principal = self.principal
        return child


def request_id_for(headers: Mapping[str, str]) -> str:
    """The client's ``x-request-id`` when it is short and printable, else a new id."""
    sent = headers.get("x-request-id")
    return sent if sent is not None and _REQUEST_ID.match(sent) else new_id()


def new_id() -> str:
    """A fresh, unguessable id (96 random bits, URL-safe)."""
    return secrets.token_urlsafe(12)


def current_context() -> RequestContext | None:
    """The context of the stream running in this task (``None`` outside a stream).

    Flows and bricks call it to learn who is calling (``ctx.principal``), the
    request id for their own logs, or the headers the client sent.
    """
    return _current.get()


def _bind(context: RequestContext) -> tuple[Token[RequestContext | None], Any]:
    """Make ``context`` current in the task running the flow; returns what :func:`_unbind`
    needs to undo it (the runtime's job).

    The flow runs inside the consumer's task, so the variable is set in that
    task's context and must be put back when the stream ends.
    """
    previous = _current.get()
    return _current.set(context), previous


def _unbind(bound: tuple[Token[RequestContext | None], Any]) -> None:
    """Undo :func:`_bind`."""
    token, previous = bound
    try:
        _current.reset(token)
    except ValueError:  # closed from another task than the one it started in
        _current.set(previous)
