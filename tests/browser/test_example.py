"""examples/browser in Chromium: the minimal page at ``/`` and the playground beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.browser.conftest import Watched
from tests.browser.pages import Playground
from tests.examples.test_sse_examples import load
from tests.support import serve_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base() -> AsyncIterator[str]:
    example = load("browser/app")
    gateway = example.build(http_port=0, transports=("sse", "websocket"), out=None)
    async with serve_gateway(gateway):
        yield gateway.urls["flows"].removesuffix("/flows")


async def test_the_minimal_page_streams_over_sse_and_websocket(base: str, watched: Watched) -> None:
    page = watched.page
    await page.goto(base + "/")
    await page.fill("#message", "hello from chromium")
    await page.click("#sse")
    await expect(page.locator("#output")).to_have_text("You said: hello from chromium\n[done]")
    await page.click("#ws")
    await expect(page.locator("#output")).to_have_text("You said: hello from chromium\n[done]")
    await watched.shot("example-page")


async def test_the_playground_runs_the_demo_flow(base: str, watched: Watched) -> None:
    playground = Playground(watched.page, base)
    await playground.open(path="/playground")
    await expect(playground.at("#flow option")).to_have_text(["default"])
    await playground.choose("default", "ui")
    await playground.say("a bomb")
    await playground.ends("error")
    assert (await playground.error()).startswith("PERMISSION_DENIED: ")
    await watched.shot("example-playground")
