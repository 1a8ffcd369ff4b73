"""llmbrick over WebSocket: several streams multiplexed on one socket, on Litestar."""

from __future__ import annotations

try:
    import litestar  # noqa: F401
    import orjson  # noqa: F401
    import uvicorn  # noqa: F401
    import websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick_websocket needs the 'websocket' extra ({exc.name} is missing): "
        "pip install '.[websocket]' from a checkout of llmbrick, "
        "or pip install 'llmbrick[websocket] @ <wheel or git URL>'"
    ) from exc

from .client import ClientStream, WebSocketClient, connect
from .server import WebSocketServer, create_router

__all__ = ["ClientStream", "WebSocketClient", "WebSocketServer", "connect", "create_router"]
