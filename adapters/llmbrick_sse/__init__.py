"""llmbrick over Server-Sent Events: ``POST /chat/completions`` on Litestar."""

from __future__ import annotations

try:
    import httpx  # noqa: F401
    import litestar  # noqa: F401
    import orjson  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick_sse needs the 'sse' extra ({exc.name} is missing): "
        "pip install '.[sse]' from a checkout of llmbrick, "
        "or pip install 'llmbrick[sse] @ <wheel or git URL>'"
    ) from exc

from .client import SSEClient
from .codec import SSECodec, encode_event, error_body, status_for, status_for_error
from .endpoint import KeptStreamEndpoint, StreamEndpoint, parse_last_event_id
from .openai import OpenAICodec, create_openai_router
from .playground import create_playground_router, playground_csp
from .server import (
    SSEServer,
    create_http_routers,
    create_meta_router,
    create_router,
    create_stream_router,
    http_error_handler,
)
from .ui import UICodec, create_ui_router
from .wire import FrameWriter, HttpCodec, Opening, Rejected

__all__ = [
    "FrameWriter",
    "HttpCodec",
    "KeptStreamEndpoint",
    "OpenAICodec",
    "Opening",
    "Rejected",
    "SSEClient",
    "SSECodec",
    "SSEServer",
    "StreamEndpoint",
    "UICodec",
    "create_http_routers",
    "create_meta_router",
    "create_openai_router",
    "create_playground_router",
    "create_router",
    "create_stream_router",
    "create_ui_router",
    "encode_event",
    "error_body",
    "http_error_handler",
    "parse_last_event_id",
    "playground_csp",
    "status_for",
    "status_for_error",
]
