"""Headless Chromium (Debian's) driven by Playwright, and live gateways serving the playground.

Playwright's own browser download cannot be fetched here, so it drives the installed
``/usr/bin/chromium`` (``scripts/_components.sh`` installs it on a fresh machine). The
launch flags keep Chromium off the network it would otherwise try to reach (Google's
update, sync and field-trial services) and off the GPU; Playwright gives every launch
a fresh temporary profile. One browser and one gateway serve a whole test module, on
the module's event loop; each test gets its own browser context (cookies, storage,
sockets), closed after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright, expect

from llmbrick import ApiKeyAuth, FlowRuntime
from llmbrick.store import StreamStore
from llmbrick_gateway import Gateway
from llmbrick_sse import create_playground_router, create_ui_router
from tests.browser.flows import Flows
from tests.components import binary
from tests.support import TIMEOUT, serve_gateway

#: Screenshots of each state the tests reach (git-ignored): look, don't assert.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: The one API key of the gateway with authentication.
API_KEY = "k-browser-test"
#: Chromium without the network side trips of a desktop browser.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Every Playwright wait is bounded by the suite's one timeout unit.
expect.set_options(timeout=TIMEOUT * 1000)


@dataclass
class Served:
    """A live gateway with the playground: its base URL and its flows."""

    base: str
    flows: Flows
    runtime: FlowRuntime


def _gateway(runtime: FlowRuntime, routes: Sequence[Any]) -> Gateway:
    return Gateway(
        runtime,
        http_port=0,
        transports=("sse", "websocket"),
        routes=[
            create_playground_router(ui_path="/v1/ui/chat"),
            create_ui_router(runtime),
            *routes,
        ],
        log_level="warning",
        out=None,
    )


@asynccontextmanager
async def serving(
    *,
    authenticated: bool = False,
    routes: Sequence[Any] = (),
    store: StreamStore | None = None,
    flows: Flows | None = None,
) -> AsyncIterator[Served]:
    """A live gateway with the test flows, the playground, the UI route and ``routes``."""
    flows = flows or Flows()
    auth = ApiKeyAuth([API_KEY]) if authenticated else None
    runtime = FlowRuntime(flows.registry, authenticator=auth, store=store)
    async with serve_gateway(_gateway(runtime, routes)) as gateway:
        yield Served(gateway.urls["flows"].removesuffix("/flows"), flows, runtime)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[Served]:
    """A gateway without authentication, serving the playground and the UI stream route."""
    async with serving() as value:
        yield value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served_with_keys() -> AsyncIterator[Served]:
    """The same, with :data:`API_KEY` required on every route."""
    async with serving(authenticated=True) as value:
        yield value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, once per module (it takes seconds to start)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=binary("chromium"), args=CHROMIUM_ARGS, timeout=TIMEOUT * 3000
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watched:
    """A page and what it did that a test must see: dialogs, script errors, CSP reports."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    async def shot(self, name: str) -> None:
        """Save a screenshot of the page as it is now under :data:`ARTIFACTS`."""
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest_asyncio.fixture(loop_scope="module")
async def watched(browser: Browser) -> AsyncIterator[Watched]:
    """A page in a fresh browser context; fails the test if the page had a script error."""
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT * 1000)
    page = await context.new_page()
    result = Watched(page)
    pending: set[asyncio.Task[Any]] = set()

    def on_dialog(dialog: Dialog) -> None:
        result.dialogs.append(dialog.message)
        task = asyncio.ensure_future(dialog.dismiss())
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            result.violations.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: result.errors.append(str(error)))
    try:
        yield result
    finally:
        await context.close()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    assert result.errors == [], result.errors
    assert result.violations == [], result.violations
