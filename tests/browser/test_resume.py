"""The playground on a server that keeps streams: Drop connection resumes, Stop cancels.

The server keeps streams in a ``MemoryStore``, so ``GET /flows`` says
``resumable: true``, SSE answers carry ``Location``, ``POST /streams`` starts a
detached stream and ``GET``/``DELETE /streams/<id>`` follow and cancel it. The
``paced`` flow says part one, then waits for the test to release part two: a
drop in between can only be repaired by resuming, because the connection that
asked is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from llmbrick import FlowRuntime, MemoryStore
from llmbrick_http import HttpSettings, build_app
from llmbrick_sse import create_playground_router, create_ui_router
from llmbrick_sse.server import create_http_routers
from llmbrick_websocket import create_router as create_websocket_router
from tests.browser.conftest import Served, Watched
from tests.browser.flows import Flows
from tests.browser.pages import Playground
from tests.support import TIMEOUT, serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: The transports with a Drop control.
RESUMING = ["sse", "eventsource", "websocket"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kept() -> AsyncIterator[Served]:
    """Every HTTP route of a runtime with a store, the WebSocket route and the playground."""
    flows = Flows()
    runtime = FlowRuntime(flows.registry, store=MemoryStore())
    routes = [
        *create_http_routers(runtime),
        create_websocket_router(runtime),
        create_playground_router(ui_path="/v1/ui/chat"),
        create_ui_router(runtime),
    ]
    app = build_app(routes, HttpSettings(), on_shutdown=[runtime.aclose])
    async with serve_asgi(app) as address:
        yield Served(f"http://{address}", flows, runtime)


async def test_the_page_offers_resume_when_the_server_keeps_streams(
    kept: Served, watched: Watched
) -> None:
    playground = Playground(watched.page, kept.base)
    await playground.open()
    await expect(playground.at("#drop")).to_be_visible()
    await expect(playground.at("#drop")).to_be_disabled()  # nothing to drop yet
    await expect(playground.at('#transport option[value="eventsource"]')).to_be_enabled()


@pytest.mark.parametrize("transport", RESUMING)
async def test_drop_connection_resumes_after_the_last_event(
    kept: Served, watched: Watched, transport: str
) -> None:
    playground = Playground(watched.page, kept.base)
    await playground.open()
    await playground.choose("paced", transport)
    key = f"drop over {transport}"
    await playground.say(key)
    await expect(playground.at("#answer")).to_have_text("part one; ")
    await expect(playground.at("#drop")).to_be_enabled()
    await watched.page.click("#drop")
    # (An EventSource may also report a lost connection it then repairs by itself.)
    await expect(playground.at("#events li.marker").first).to_have_text(
        "connection dropped after event 1; resuming"
    )
    kept.flows.released(key).set()
    await playground.ends("done")
    # Part two reached the page on the resumed connection, once: the flow ran to its end.
    assert await playground.answer() == "part one; part two"
    await asyncio.wait_for(kept.flows.finished(key).wait(), TIMEOUT)
    assert key not in kept.flows.cancelled
    await watched.shot(f"resumed-{transport}")


@pytest.mark.parametrize("transport", ["sse", "eventsource", "websocket", "ui"])
async def test_stop_cancels_a_kept_stream(kept: Served, watched: Watched, transport: str) -> None:
    playground = Playground(watched.page, kept.base)
    await playground.open()
    await playground.choose("paced", transport)
    key = f"stop a kept stream over {transport}"
    await playground.say(key)
    await expect(playground.at("#answer")).to_have_text("part one; ")
    await expect(playground.at("#stop")).to_be_enabled()
    await watched.page.click("#stop")
    # Cancelled on the server at once, not after the disconnect policy's grace period.
    await asyncio.wait_for(kept.flows.finished(key).wait(), TIMEOUT)
    assert key in kept.flows.cancelled
    await playground.ends("cancelled")
