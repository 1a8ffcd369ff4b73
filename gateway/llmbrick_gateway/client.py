"""One client API over the three transports: the URL's scheme picks the transport.

Each branch imports its adapter only when a URL of its scheme is used, so a client
with only the ``sse`` extra installed can still call ``http://`` URLs; another
scheme raises the adapter's ``ImportError``, whose one line names the extra.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel

from llmbrick import Event, InvokeResult

__all__ = ["FlowClient", "Target", "connect", "parse_url"]

_SCHEMES = {"http": "sse", "https": "sse", "ws": "websocket", "wss": "websocket", "grpc": "grpc"}
_FORMS = "http://HOST:PORT (SSE), ws://HOST:PORT/ws (WebSocket) or grpc://HOST:PORT (gRPC)"


class FlowClient(Protocol):
    """What every llmbrick client offers; each returns the same event dicts."""

    def stream(self, flow: str, request: Mapping[str, Any] | BaseModel) -> AsyncIterator[Event]: ...

    async def invoke(self, flow: str, request: Mapping[str, Any] | BaseModel) -> InvokeResult: ...


class Target(NamedTuple):
    """A checked gateway URL: what :func:`connect` dials.

    Attributes:
        transport: ``"sse"``, ``"websocket"`` or ``"grpc"``.
        scheme: the URL's scheme, lower case.
        address: ``host:port`` as written (brackets kept for IPv6).
        path: the endpoint's path (``/chat/completions``, ``/ws``; empty for gRPC).
    """

    transport: str
    scheme: str
    address: str
    path: str


def parse_url(url: str) -> Target:
    """Check ``url`` and tell what to connect to; :func:`connect` calls it first.

    Raises:
        ValueError: the URL names no transport, no host, or a malformed port;
            the message is one line that says what to write instead.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:  # a bad IPv6 literal, a port that is not a number
        raise ValueError(f"bad URL {url!r} ({exc}): give {_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"cannot tell the transport of {url!r}: use {_FORMS}")
    if not parts.hostname:
        raise ValueError(f"bad URL {url!r}: no host; give {_FORMS}")
    transport = _SCHEMES[scheme]
    if transport == "grpc":
        if port is None:
            raise ValueError(f"bad URL {url!r}: a gRPC URL needs its port, e.g. grpc://HOST:50051")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"bad URL {url!r}: a gRPC URL has no path; give grpc://HOST:PORT")
        path = ""
    elif transport == "sse":
        path = parts.path.rstrip("/") or "/chat/completions"
    else:
        path = parts.path if parts.path not in ("", "/") else "/ws"
        if parts.query:
            path += f"?{parts.query}"
    return Target(transport, scheme, parts.netloc, path)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[FlowClient]:
    """Connect to a gateway: ``http(s)://host:port[/path]`` for SSE, ``ws(s)://host:port/ws``
    for WebSocket, ``grpc://host:port`` for gRPC.

    Raises:
        ValueError: the URL is malformed or its scheme is none of those.
        ImportError: the scheme's extra is not installed (the message names it).
    """
    target = parse_url(url)
    if target.transport == "sse":
        from llmbrick_sse import SSEClient

        async with SSEClient(f"{target.scheme}://{target.address}", path=target.path) as sse:
            yield sse
    elif target.transport == "websocket":
        from llmbrick_websocket import connect as websocket_connect

        async with websocket_connect(f"{target.scheme}://{target.address}{target.path}") as ws:
            yield ws
    else:
        from llmbrick_grpc import GrpcClient

        async with GrpcClient(target.address) as grpc:
            yield grpc
