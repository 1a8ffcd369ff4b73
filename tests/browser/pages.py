"""The playground as a test drives it: what a person would click, and where results show."""

from __future__ import annotations

from playwright.async_api import Locator, Page, expect

__all__ = ["Playground"]


class Playground:
    """One playground page at ``base`` (a gateway's ``http://host:port``)."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base

    async def open(self, *, path: str = "/", expect_flows: bool = True) -> None:
        """Load the page (``/`` redirects to it) and wait until the flows are listed."""
        await self.page.goto(self.base + path)
        if expect_flows:
            await expect(self.page.locator("#flow option")).not_to_have_count(0)

    def at(self, selector: str) -> Locator:
        return self.page.locator(selector)

    async def choose(self, flow: str, transport: str = "sse") -> None:
        await self.page.select_option("#flow", flow)
        await self.page.select_option("#transport", transport)

    async def say(self, text: str) -> None:
        """Type a chat message and send it."""
        await self.page.fill("#message", text)
        await self.page.click("#send")

    async def ends(self, status: str) -> None:
        """Wait until the run ends with ``status`` (done, error, cancelled)."""
        await expect(self.at("#status")).to_have_attribute("data-state", status)

    async def answer(self) -> str:
        return await self.at("#answer").text_content() or ""

    async def error(self) -> str:
        return await self.at("#error").text_content() or ""
