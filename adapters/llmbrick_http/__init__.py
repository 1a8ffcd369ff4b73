"""The HTTP host shared by llmbrick's HTTP transports (SSE, WebSocket, OpenAI, AI SDK).

Not a transport itself: it builds the Litestar app with the shared policy
(allowed hosts, CORS, request ids, error bodies), turns an ASGI scope into a
``RequestContext``, and runs uvicorn with connection-level limits.
"""

from __future__ import annotations

try:
    import litestar  # noqa: F401
    import orjson  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick's HTTP transports need the 'sse' or 'websocket' extra ({exc.name} is "
        "missing): pip install '.[sse]' from a checkout"
    ) from exc

from .app import (
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    RAW_SEND_KEY,
    LlmbrickApp,
    build_app,
    error_body,
    http_error_handler,
    scope_request_id,
)
from .context import context_from_scope, scope_headers
from .host import ON_LOST_KEY, HttpServer, uvicorn_config
from .settings import HttpSettings, TlsFiles, loopback_hosts

__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "ON_LOST_KEY",
    "RAW_SEND_KEY",
    "HttpServer",
    "HttpSettings",
    "LlmbrickApp",
    "TlsFiles",
    "build_app",
    "context_from_scope",
    "error_body",
    "http_error_handler",
    "loopback_hosts",
    "scope_headers",
    "scope_request_id",
    "uvicorn_config",
]
