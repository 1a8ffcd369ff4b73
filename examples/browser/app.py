"""A browser page talking to the gateway over fetch-streaming SSE and WebSocket.

Run ``python examples/browser/app.py`` and open http://127.0.0.1:8000/ : the page,
the SSE endpoint and the WebSocket endpoint share one origin, so no CORS is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, get

from llmbrick_gateway import Gateway, demo_pipeline

PAGE = Path(__file__).with_name("index.html").read_text()


@get("/", media_type=MediaType.HTML, name="browser-page")
async def page() -> str:
    """The page, read once at import."""
    return PAGE


def build(**options: Any) -> Gateway:
    """The demo gateway with the page added on its HTTP port."""
    return Gateway(demo_pipeline(), routes=[page], **options)


if __name__ == "__main__":
    build().run()
