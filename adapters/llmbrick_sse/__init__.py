"""llmbrick over Server-Sent Events: ``POST /chat/completions`` on Litestar."""

from __future__ import annotations

try:
    import httpx  # noqa: F401
    import litestar  # noqa: F401
    import orjson  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick_sse needs the 'sse' extra ({exc.name} is missing): pip install 'llmbrick[sse]'"
    ) from exc

from .client import SSEClient
from .codec import encode_event, error_body, status_for
from .server import SSEServer, create_meta_router, create_router, http_error_handler

__all__ = [
    "SSEClient",
    "SSEServer",
    "create_meta_router",
    "create_router",
    "encode_event",
    "error_body",
    "http_error_handler",
    "status_for",
]
