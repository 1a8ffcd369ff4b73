"""One client API over the three transports: the URL's scheme picks the transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel

from llmbrick import Event, InvokeResult
from llmbrick_grpc import GrpcClient
from llmbrick_sse import SSEClient
from llmbrick_websocket import connect as websocket_connect

__all__ = ["FlowClient", "connect"]


class FlowClient(Protocol):
    """What every llmbrick client offers; each returns the same event dicts."""

    def stream(self, flow: str, request: Mapping[str, Any] | BaseModel) -> AsyncIterator[Event]: ...

    async def invoke(self, flow: str, request: Mapping[str, Any] | BaseModel) -> InvokeResult: ...


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[FlowClient]:
    """Connect to a gateway: ``http(s)://host:port[/path]`` for SSE, ``ws(s)://host:port/ws``
    for WebSocket, ``grpc://host:port`` for gRPC.

    Raises:
        ValueError: the scheme is none of those.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        path = parts.path.rstrip("/") or "/chat/completions"
        async with SSEClient(f"{parts.scheme}://{parts.netloc}", path=path) as sse:
            yield sse
    elif parts.scheme in ("ws", "wss"):
        target = url if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}/ws"
        async with websocket_connect(target) as ws:
            yield ws
    elif parts.scheme == "grpc":
        async with GrpcClient(parts.netloc) as grpc:
            yield grpc
    else:
        raise ValueError(f"cannot tell the transport of {url!r}: use http://, ws:// or grpc://")
