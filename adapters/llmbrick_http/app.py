"""The Litestar app every llmbrick HTTP server builds: routes plus the shared policy.

The app checks the ``Host`` header (DNS rebinding), gives each
request its id (the client's ``x-request-id`` or a new one, echoed in the
response), and CORS comes from Litestar's own ``CORSConfig``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from litestar import Litestar, MediaType, Request, Response
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.types import Message, Send

from llmbrick import ErrorCode
from llmbrick.context import request_id_for

from .context import scope_headers
from .settings import HttpSettings

__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "RAW_SEND_KEY",
    "REQUEST_ID_KEY",
    "LlmbrickApp",
    "build_app",
    "error_body",
    "http_error_handler",
    "scope_request_id",
]

#: Where the app leaves the request id in ``scope["state"]``.
REQUEST_ID_KEY = "llmbrick.request_id"
#: Where :class:`LlmbrickApp` leaves the server's own ``send`` in the scope.
RAW_SEND_KEY = "llmbrick.send"

#: Request headers a browser page may send cross-origin.
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id")
#: Response headers a cross-origin page may read.
CORS_EXPOSE_HEADERS = (
    "Location",
    "Retry-After",
    "WWW-Authenticate",
    "X-Request-Id",
    "X-Llmbrick-Stream-Id",
    "X-Vercel-Ai-Ui-Message-Stream",
)
_MAX_ECHO = 64


def error_body(error: dict[str, Any]) -> bytes:
    """The JSON body of an HTTP error: ``{"error": {code, message, details}}``."""
    return orjson.dumps({"error": error})


def scope_request_id(scope: Any) -> str | None:
    """The request id the app chose for this scope."""
    state = scope.get("state")
    return state.get(REQUEST_ID_KEY) if isinstance(state, dict) else None


class _EchoId:
    """``send``, adding the request id to the response start (an object of two slots,
    where a closure with its header would hold about three times as much per request)."""

    __slots__ = ("_request_id", "_send")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id

    async def __call__(self, message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            echo = (b"x-request-id", self._request_id.encode())
            message["headers"] = [*message.get("headers", ()), echo]
        await self._send(message)


async def _refuse_host(scope: Any, send: Send, host: str) -> None:
    shown = host[:_MAX_ECHO]
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": ""})
        return
    body = error_body(
        {
            "code": ErrorCode.INVALID_ARGUMENT.value,
            "message": f"host {shown!r} is not served here; the server allows other names "
            "(see --allowed-host)",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (404, 405, ...) in llmbrick's ``{"error": {...}}`` shape."""
    code = {
        400: ErrorCode.INVALID_ARGUMENT,
        404: ErrorCode.NOT_FOUND,
        405: ErrorCode.INVALID_ARGUMENT,
        413: ErrorCode.INVALID_ARGUMENT,
    }.get(exc.status_code, ErrorCode.INTERNAL)
    message = exc.detail if exc.status_code < 500 else "internal error"
    return Response(
        error_body({"code": code.value, "message": message}),
        status_code=exc.status_code,
        media_type=MediaType.JSON,
        headers=exc.headers,
    )


class LlmbrickApp(Litestar):
    """A Litestar app with llmbrick's request policy, handing its streaming routes the
    server's own ``send``.

    Every request first has its ``Host`` header checked (DNS rebinding) and gets its
    id (the client's ``x-request-id`` or a new one, echoed in the response). This is
    done here rather than in a middleware, which would be one more coroutine frame
    held by every open stream.

    Every middleware on the way (Litestar's exception handling, CORS) only looks at
    the response start, yet each wraps ``send`` in a coroutine that every body chunk
    then passes through: a few microseconds per event. The streaming endpoints send
    the start through the wrapped ``send`` and the body straight to the server.
    Mounted in another app, they use the wrapped one.

    Args:
        http_settings: the policy's settings (allowed hosts).
        *args, **kwargs: Litestar's.
    """

    def __init__(self, *args: Any, http_settings: HttpSettings | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.http_settings = http_settings or HttpSettings()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            headers = scope_headers(scope)
            host = headers.get("host")
            if not self.http_settings.host_allowed(host):
                await _refuse_host(scope, send, host or "")
                return
            request_id = request_id_for(headers)
            scope.setdefault("state", {})[REQUEST_ID_KEY] = request_id
            if kind == "http":
                scope[RAW_SEND_KEY] = send
            send = _EchoId(send, request_id)
        await super().__call__(scope, receive, send)


def build_app(
    route_handlers: Sequence[Any],
    settings: HttpSettings,
    *,
    on_shutdown: Iterable[Callable[[], Any]] = (),
) -> Litestar:
    """A Litestar app serving ``route_handlers`` under ``settings``' policy."""
    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=list(CORS_ALLOW_HEADERS),
            expose_headers=list(CORS_EXPOSE_HEADERS),
            max_age=600,
        )
    return LlmbrickApp(
        route_handlers=list(route_handlers),
        openapi_config=None,
        logging_config=None,
        cors_config=cors,
        http_settings=settings,
        exception_handlers={HTTPException: http_error_handler},
        on_shutdown=list(on_shutdown),
    )
