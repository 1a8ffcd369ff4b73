"""Which transports this installation can serve, found by importing their adapters.

Each transport lives in its own adapter package, and each adapter needs its own
extra (``llmbrick[sse]``, ``[websocket]``, ``[grpc]``). The gateway and the
``llmbrick`` command import an adapter only when a transport is asked for, so an
installation with one extra still serves that transport; an adapter whose extra
is missing raises an ``ImportError`` whose message names the extra, and that
message is what the user sees.
"""

from __future__ import annotations

import importlib

__all__ = ["TRANSPORTS", "installed_transports", "require_transport"]

#: Every transport the gateway knows, in the order endpoints are listed.
TRANSPORTS = ("sse", "websocket", "grpc")

# The adapter packages a transport needs inside the gateway. WebSocket needs the
# SSE adapter too: the gateway's /flows and /healthz routes come from llmbrick_sse.
_NEEDS: dict[str, tuple[str, ...]] = {
    "sse": ("llmbrick_sse",),
    "websocket": ("llmbrick_websocket", "llmbrick_sse"),
    "grpc": ("llmbrick_grpc",),
}


def require_transport(transport: str) -> None:
    """Import what ``transport`` needs in the gateway.

    Raises:
        ImportError: an extra it needs is missing (one line naming the extra).
        ValueError: ``transport`` is not one of :data:`TRANSPORTS`.
    """
    if transport not in _NEEDS:
        raise ValueError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}")
    for adapter in _NEEDS[transport]:
        importlib.import_module(adapter)


def installed_transports() -> tuple[str, ...]:
    """The transports whose extras are installed, in :data:`TRANSPORTS` order."""
    found = []
    for transport in TRANSPORTS:
        try:
            require_transport(transport)
        except ImportError:
            continue
        found.append(transport)
    return tuple(found)
