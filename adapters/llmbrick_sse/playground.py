"""The playground: a page on the HTTP port to try every flow over every browser transport.

``GET /playground`` serves one page (``static/playground.html`` with its
script and style beside it, shipped in the wheel): it lists the flows from
``GET /flows``, builds a form from each flow's request schema (a chat box for
chat flows), streams over SSE (fetch), WebSocket, the AI SDK's UI message
stream or, when the server keeps streams, EventSource with resume, and shows
the events as they arrive. It needs no network beyond its own origin and no
build step.

The page never turns server text into HTML, and its Content-Security-Policy
lets it run only its own same-origin script and connect only to its own host
(``'self'`` plus ``ws:``/``wss:`` for that host, which ``'self'`` does not cover
in every browser), so a flow's output cannot run code in it.
"""

from __future__ import annotations

import html
import re
from importlib.resources import files
from typing import Any

from litestar import Request, Response, Router, get
from litestar.response import Redirect

__all__ = ["create_playground_router", "playground_csp"]

_STATIC = files(__package__ or "llmbrick_sse").joinpath("static")
# A Host header as a browser sends it: a name or an IP (v6 in brackets), maybe a port.
# Anything else (spaces, quotes, semicolons) would let a request write CSP directives.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
_COMMON_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
}


def playground_csp(host: str | None) -> str:
    """The page's Content-Security-Policy for a request to ``host`` (its ``Host`` header).

    Only the page's own script and style run; fetches go to ``'self'``, WebSockets
    to ``ws://host`` and ``wss://host`` when the host is well formed (otherwise the
    page gets no WebSocket rather than a header built from a hostile value).
    """
    connect = ["'self'"]
    if host and _HOST.fullmatch(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(connect)}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _asset(name: str) -> bytes:
    return _STATIC.joinpath(name).read_bytes()


def create_playground_router(
    *,
    path: str = "/playground",
    redirect_root: bool = True,
    flows_path: str = "/flows",
    sse_path: str = "/chat/completions",
    ws_path: str = "/ws",
    ui_path: str | None = None,
    streams_path: str = "/streams",
) -> Router:
    """The playground page and its two assets, and (optionally) ``/`` redirecting to it.

    The other paths tell the page where the app serves each API; they are the
    defaults of the routers this package and ``llmbrick_websocket`` build.

    Args:
        path: where the page is served; its script and style are under it.
        redirect_root: answer ``GET /`` with a redirect to the page (307, so a
            browser does not remember it once the app serves something else there).
        flows_path: ``GET /flows`` (the flow list and the ``resumable`` flag).
        sse_path: llmbrick's SSE route.
        ws_path: the WebSocket route.
        ui_path: the AI SDK's UI message stream (:func:`create_ui_router`); ``None``
            when it is not mounted, and the page does not offer it.
        streams_path: the resumable streams' route (used only when ``GET /flows``
            says ``resumable: true``).
    """
    path = "/" + path.strip("/")
    script_path, style_path = f"{path}/playground.js", f"{path}/playground.css"
    settings = {
        "{{flows_path}}": flows_path,
        "{{sse_path}}": sse_path,
        "{{ws_path}}": ws_path,
        "{{ui_path}}": ui_path or "",
        "{{streams_path}}": streams_path,
        "{{script_path}}": script_path,
        "{{style_path}}": style_path,
    }
    page = _asset("playground.html").decode()
    for marker, value in settings.items():
        page = page.replace(marker, html.escape(value, quote=True))
    page_bytes = page.encode()
    script = _asset("playground.js")
    style = _asset("playground.css")

    async def playground(request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {
            **_COMMON_HEADERS,
            "content-security-policy": playground_csp(request.headers.get("host")),
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
        }
        return Response(page_bytes, media_type="text/html", headers=headers)

    async def playground_script() -> Response[bytes]:
        return Response(script, media_type="text/javascript", headers=_COMMON_HEADERS)

    async def playground_style() -> Response[bytes]:
        return Response(style, media_type="text/css", headers=_COMMON_HEADERS)

    handlers: list[Any] = [
        get(path, name="llmbrick-playground")(playground),
        get(script_path, name="llmbrick-playground-script")(playground_script),
        get(style_path, name="llmbrick-playground-style")(playground_style),
    ]
    if redirect_root and path != "/":

        async def to_playground() -> Redirect:
            return Redirect(path, status_code=307)

        handlers.append(get("/", name="llmbrick-playground-redirect")(to_playground))
    return Router(path="/", route_handlers=handlers)
