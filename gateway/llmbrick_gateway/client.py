"""One client API over the three transports: the URL's scheme picks the transport.

Each branch imports its adapter only when a URL of its scheme is used, so a client
with only the ``sse`` extra installed can still call ``http://`` URLs; another
scheme raises the adapter's ``ImportError``, whose one line names the extra.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple
from urllib.parse import urlsplit

from llmbrick.client import FlowClient

__all__ = ["FlowClient", "Target", "connect", "parse_url"]

_SCHEMES = {
    "http": "sse",
    "https": "sse",
    "ws": "websocket",
    "wss": "websocket",
    "grpc": "grpc",
    "grpcs": "grpc",
}
_TLS_SCHEMES = frozenset({"https", "wss", "grpcs"})
_FORMS = "http://HOST:PORT (SSE), ws://HOST:PORT/ws (WebSocket) or grpc://HOST:PORT (gRPC)"


class Target(NamedTuple):
    """A checked gateway URL: what :func:`connect` dials.

    Attributes:
        transport: ``"sse"``, ``"websocket"`` or ``"grpc"``.
        scheme: the URL's scheme, lower case (``https``, ``wss`` and ``grpcs`` use TLS).
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
            raise ValueError(
                f"bad URL {url!r}: a gRPC URL needs its port, e.g. {scheme}://HOST:50051"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"bad URL {url!r}: a gRPC URL has no path; give {scheme}://HOST:PORT")
        path = ""
    elif transport == "sse":
        path = parts.path.rstrip("/") or "/chat/completions"
    else:
        path = parts.path if parts.path not in ("", "/") else "/ws"
        if parts.query:
            path += f"?{parts.query}"
    return Target(transport, scheme, parts.netloc, path)


@asynccontextmanager
async def connect(
    url: str,
    *,
    api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - each client applies it its own way
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> AsyncIterator[FlowClient]:
    """A client of the server at ``url``, closed when the block ends.

    ``http(s)://host:port[/path]`` gives an ``SSEClient``, ``ws(s)://host:port/ws``
    a ``WebSocketClient``, ``grpc(s)://host:port`` a ``GrpcClient``: each has
    ``stream(flow, request)``, ``invoke(flow, request)`` and ``list_flows()``,
    returns the same event dicts, and follows the same error policy (see
    :class:`llmbrick.client.FlowClient`): ``Unavailable`` when no server can be
    reached, the stream's terminal ``error`` event for everything else.

    Args:
        url: where the server listens; ``https``, ``wss`` and ``grpcs`` use TLS.
        api_key: sent as ``Authorization: Bearer <key>``.
        headers: HTTP headers (for WebSocket, on the handshake) or gRPC metadata.
        timeout: seconds: to connect and between reads (SSE; default 60), for the
            handshakes (WebSocket; default 10), the deadline of each call (gRPC;
            default none).
        ca_file: a PEM file of the CAs to trust (a private CA), for a TLS scheme.
        cert_file, key_file: a client certificate and its key (mutual TLS).

    Raises:
        ValueError: the URL is malformed or its scheme is none of those, or TLS
            files are given for a plaintext scheme.
        ImportError: the scheme's extra is not installed (the message names it).
    """
    target = parse_url(url)
    if target.scheme not in _TLS_SCHEMES and (ca_file or cert_file or key_file):
        raise ValueError(
            f"TLS files are for https://, wss:// and grpcs:// URLs, not {target.scheme}://"
        )
    client: FlowClient
    if target.transport == "sse":
        from llmbrick_sse import SSEClient

        client = SSEClient(
            f"{target.scheme}://{target.address}",
            path=target.path,
            api_key=api_key,
            headers=headers,
            timeout=60.0 if timeout is None else timeout,
            read_timeout=60.0 if timeout is None else timeout,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    elif target.transport == "websocket":
        from llmbrick_websocket import WebSocketClient

        client = WebSocketClient(
            f"{target.scheme}://{target.address}{target.path}",
            api_key=api_key,
            headers=headers,
            timeout=10.0 if timeout is None else timeout,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    else:
        from llmbrick_grpc import GrpcClient

        client = GrpcClient(
            target.address,
            api_key=api_key,
            headers=headers,
            timeout=timeout,
            tls=target.scheme == "grpcs",
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    async with client:
        yield client
