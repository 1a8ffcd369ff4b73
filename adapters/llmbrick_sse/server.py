"""The SSE server: ``POST /chat/completions`` streaming a flow's events, on Litestar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Request, Response, Router, get
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from llmbrick import FlowRuntime, LLMBrickError
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES
from llmbrick.serving import as_runtime, settle_heap
from llmbrick_http import (
    HttpSettings,
    build_app,
    context_from_scope,
    error_body,
    http_error_handler,
    uvicorn_config,
)

from .codec import SSECodec, status_for_error
from .endpoint import KeptStreamEndpoint, StreamEndpoint
from .openai import create_openai_router
from .wire import HttpCodec

__all__ = [
    "SSEServer",
    "create_http_routers",
    "create_meta_router",
    "create_router",
    "create_stream_router",
    "http_error_handler",
]

F = TypeVar("F", bound=Callable[..., Any])


def create_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/chat/completions",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    settings: HttpSettings | None = None,
    codec: HttpCodec | None = None,
    name: str = "llmbrick-chat",
    streams_path: str | None = "/streams",
) -> Router:
    """A streaming endpoint for ``runtime``, to mount on any Litestar app.

    Args:
        runtime: the runtime shared with every other adapter.
        prefix: mounted under this path (e.g. ``"/api"``).
        path: the endpoint's path.
        max_body_size: bytes a request body may have (413 beyond).
        ping_interval: seconds of silence before a keepalive frame (0 disables).
        max_buffer_bytes: encoded bytes kept per stream for a slow client; the
            flow waits beyond.
        settings: the HTTP limits (body read timeout).
        codec: the wire format (default: llmbrick's SSE).
        name: the route's name.
        streams_path: where :func:`create_stream_router` serves kept streams, under
            the same prefix (``None``: nowhere, so no ``Location`` and no resume by
            ``Last-Event-ID``).
    """
    endpoint = StreamEndpoint(
        runtime,
        codec or SSECodec(),
        max_body_size=max_body_size,
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        settings=settings,
        streams_path=None if streams_path is None else (prefix.rstrip("/") + streams_path),
    )

    async def stream_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    return Router(
        path=prefix or "/",
        route_handlers=[asgi(path, copy_scope=False, name=name)(stream_endpoint)],
    )


def create_stream_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/streams",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    settings: HttpSettings | None = None,
) -> Router:
    """Kept streams over HTTP: ``POST {path}`` starts one detached (201 and its
    ``Location``), ``GET {path}/{id}`` replays and follows it (SSE, resuming after
    ``Last-Event-ID``), ``DELETE {path}/{id}`` cancels it.

    They answer 404 (or 400 for ``POST``) when the runtime has no store.
    """
    full = prefix.rstrip("/") + path
    start = StreamEndpoint(
        runtime,
        SSECodec(detached=True),
        max_body_size=max_body_size,
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        settings=settings,
        streams_path=full,
    )
    kept = KeptStreamEndpoint(
        runtime,
        SSECodec(),
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        streams_path=full,
    )

    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        # Mounted, so the path is what follows {path}: nothing for the collection,
        # /<id> for one stream (Litestar routes path parameters of ASGI handlers badly).
        rest = str(scope.get("path", "")).strip("/")
        if not rest:
            await start(scope, receive, send)
        elif "/" in rest:
            await send_not_found(send)
        else:
            await kept(scope, receive, send)

    return Router(
        path=prefix or "/",
        route_handlers=[
            asgi(path, is_mount=True, copy_scope=True, name="llmbrick-streams")(streams)
        ],
    )


async def send_not_found(send: Send) -> None:
    """A 404 in llmbrick's error shape, from a raw ASGI handler."""
    body = error_body({"code": "NOT_FOUND", "message": "no such path"})
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_http_routers(
    runtime: FlowRuntime,
    *,
    prefix: str = "",
    path: str = "/chat/completions",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    settings: HttpSettings | None = None,
    openai: bool = True,
) -> list[Router]:
    """Every HTTP route of llmbrick for ``runtime``: the SSE endpoint, ``/flows``,
    ``/healthz``, kept streams and (``openai``) the OpenAI API under ``/v1``.

    ``SSEServer`` and the gateway both serve these, so one place says what an
    llmbrick HTTP port offers.
    """
    options: dict[str, Any] = {
        "prefix": prefix,
        "max_body_size": max_body_size,
        "ping_interval": ping_interval,
        "max_buffer_bytes": max_buffer_bytes,
        "settings": settings,
    }
    routers = [
        create_router(runtime, path=path, **options),
        create_meta_router(runtime, prefix=prefix),
        create_stream_router(runtime, **options),
    ]
    if openai:
        options["prefix"] = prefix.rstrip("/") + "/v1"
        routers.append(create_openai_router(runtime, **options))
    return routers


def create_meta_router(runtime: FlowRuntime, *, prefix: str = "") -> Router:
    """``GET /flows`` (names, descriptions, request schemas) and ``GET /healthz``.

    Health answers 503 while the runtime drains, so load balancers stop sending work.
    """

    async def list_flows(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            await runtime.authenticate(context_from_scope(request.scope, "http"))
        except LLMBrickError as exc:
            error = exc.to_info()
            return Response(
                error_body(dict(error)),
                status_code=status_for_error(error),
                media_type="application/json",
                headers={"www-authenticate": 'Bearer realm="llmbrick"'},
            )
        return Response(
            {"flows": runtime.registry.describe(), "resumable": runtime.store is not None}
        )

    async def healthz() -> Response[dict[str, Any]]:
        if runtime.draining:
            return Response({"status": "draining"}, status_code=503)
        return Response({"status": "ok", "streams": runtime.active_streams}, status_code=200)

    return Router(
        path=prefix or "/",
        route_handlers=[
            get("/flows", name="llmbrick-flows")(list_flows),
            get("/healthz", name="llmbrick-health", cache=False)(healthz),
        ],
    )


class SSEServer:
    """Serve flows over SSE.

    Args:
        target: a Pipeline, Brick, flow function, FlowRegistry or FlowRuntime
            (see :func:`llmbrick.as_runtime`); a pipeline becomes the flow ``default``.
        prefix, path, max_body_size, ping_interval, max_buffer_bytes: as :func:`create_router`.
        http: limits, allowed hosts, CORS origins and TLS for the HTTP port.
        openai: also serve the OpenAI API under ``{prefix}/v1`` (see
            :func:`~llmbrick_sse.create_openai_router`), with the same limits.

    It serves :func:`create_http_routers`: the SSE endpoint, ``/flows``,
    ``/healthz``, kept streams under ``/streams`` and the OpenAI API.
    """

    def __init__(
        self,
        target: object = None,
        *,
        prefix: str = "",
        path: str = "/chat/completions",
        max_body_size: int = 1 << 20,
        ping_interval: float = 15.0,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        http: HttpSettings | None = None,
        openai: bool = True,
    ) -> None:
        self.runtime = as_runtime(target)
        self.http = http or HttpSettings()
        self.routers = create_http_routers(
            self.runtime,
            prefix=prefix,
            path=path,
            max_body_size=max_body_size,
            ping_interval=ping_interval,
            max_buffer_bytes=max_buffer_bytes,
            settings=self.http,
            openai=openai,
        )
        #: The SSE endpoint's router.
        self.router = self.routers[0]
        self.app = build_app(self.routers, self.http, on_shutdown=[self.runtime.aclose])

    def flow(self, name: str | None = None, **options: Any) -> Callable[[F], F]:
        """Register a flow on this server's registry (see ``FlowRegistry.flow``)."""
        return self.runtime.registry.flow(name, **options)

    def run(self, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
        """Serve until interrupted, with uvloop and httptools when they are installed."""
        import uvicorn

        options: dict[str, Any] = {"log_level": "info", "loop": "auto", "lifespan": "on"}
        options.update(uvicorn_options)
        config = uvicorn_config(self.app, self.http, host=host, port=port, **options)
        server = uvicorn.Server(config)
        settle_heap()
        server.run()
