"""A :class:`~llmbrick.RequestContext` from an ASGI scope (HTTP request or WebSocket handshake)."""

from __future__ import annotations

from typing import Any

from llmbrick import RequestContext
from llmbrick.context import Headers

__all__ = ["context_from_scope", "scope_headers"]


def scope_headers(scope: Any) -> Headers:
    """The scope's headers, decoded as latin-1 (as HTTP requires) when read."""
    return Headers.from_raw(scope["headers"])


def context_from_scope(
    scope: Any, transport: str, *, credentials: str | None = None
) -> RequestContext:
    """The request context for an ASGI ``http`` or ``websocket`` scope.

    Args:
        scope: the ASGI scope.
        transport: the label logs and metrics use (``"sse"``, ``"websocket"``, ``"openai"``...).
        credentials: a bearer token found outside the ``Authorization`` header.
    """
    client = scope.get("client")
    peer = None
    if client:
        host, port = client[0], client[1]
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    state = scope.get("state")
    request_id = state.get("llmbrick.request_id") if isinstance(state, dict) else None
    return RequestContext(
        transport,
        headers=scope_headers(scope),
        peer=peer,
        credentials=credentials,
        request_id=request_id,
    )
