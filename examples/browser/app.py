"""The demo gateway for browsers: a minimal page, the playground and the AI SDK route.

Run ``python examples/browser/app.py`` and open http://127.0.0.1:8000/
(``index.html``: the least code that streams over fetch-SSE and WebSocket, to
copy from) or http://127.0.0.1:8000/playground (every flow over SSE, WebSocket
and the AI SDK's UI message stream). Pages, SSE and WebSocket share one origin,
so no CORS is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, get

from llmbrick.serving import as_runtime
from llmbrick_gateway import Gateway, demo_pipeline
from llmbrick_sse import create_playground_router, create_ui_router

PAGE = Path(__file__).with_name("index.html").read_text()


@get("/", media_type=MediaType.HTML, name="browser-page")
async def page() -> str:
    """The minimal page, read once at import."""
    return PAGE


def build(**options: Any) -> Gateway:
    """The demo gateway with the playground, the UI message stream route and the page."""
    runtime = as_runtime(demo_pipeline())
    routes = [
        page,
        # "/" is the minimal page here, so the playground does not redirect it.
        create_playground_router(redirect_root=False, ui_path="/v1/ui/chat"),
        create_ui_router(runtime),
    ]
    return Gateway(runtime, routes=routes, **options)


if __name__ == "__main__":
    build().run()
