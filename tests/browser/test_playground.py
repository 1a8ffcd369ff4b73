"""The playground in headless Chromium against a live gateway: flows, transports, Stop, XSS, keys.

Each test waits on what the page shows (Playwright's auto-waiting ``expect``) or on
what the server did (an event a flow sets in its ``finally``), never on time, and
leaves a screenshot of the state it checked under ``tests/browser/artifacts/``.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from playwright.async_api import expect

from tests.browser.conftest import API_KEY, Served, Watched
from tests.browser.flows import XSS
from tests.browser.pages import Playground
from tests.support import TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Every transport the page offers for a chat flow on a server that keeps no streams.
TRANSPORTS = ["sse", "websocket", "ui"]


async def test_the_root_redirects_to_the_page_served_with_a_strict_policy(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=TIMEOUT) as client:
        root = await client.get("/")
        page = await client.get("/playground")
        script = await client.get("/playground/playground.js")
    assert (root.status_code, root.headers["location"]) == (307, "/playground")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    host = served.base.removeprefix("http://")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    assert "<script>" not in page.text  # the only script is the same-origin file
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"


async def test_the_page_lists_the_flows_and_builds_a_chat_box_or_a_form(
    served: Served, watched: Watched
) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    assert watched.page.url == served.base + "/playground"
    names = await playground.at("#flow option").all_text_contents()
    assert names == [spec["name"] for spec in served.flows.registry.describe()]
    await expect(playground.at("#flow")).to_have_value("default")
    await expect(playground.at("#chat")).to_be_visible()
    await expect(playground.at("#flow-description")).to_have_text(
        "Echoes your last message word by word."
    )
    # This server keeps no streams: nothing about resuming is offered.
    await expect(playground.at("#drop")).to_be_hidden()
    await expect(playground.at('#transport option[value="eventsource"]')).to_be_disabled()
    await watched.shot("flows-chat")

    await playground.choose("sum")
    await expect(playground.at("#chat")).to_be_hidden()
    kinds = {
        name: await playground.at(f"#field-{name}").get_attribute("data-kind")
        for name in ("numbers", "label", "scale", "mode", "verbose")
    }
    assert kinds == {
        "numbers": "json",
        "label": "string",
        "scale": "number",
        "mode": "enum",
        "verbose": "boolean",
    }
    # The UI message stream carries chat messages only.
    await expect(playground.at('#transport option[value="ui"]')).to_be_disabled()
    await watched.shot("flows-form")


async def test_a_form_request_streams_and_a_bad_one_shows_the_servers_422(
    served: Served, watched: Watched
) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    await playground.choose("sum")
    await watched.page.fill("#field-numbers", "[2, 3, 4]")
    await watched.page.select_option("#field-mode", label="multiply")
    await watched.page.click("#send")
    await playground.ends("error")  # label is required
    assert re.fullmatch(
        r"422 INVALID_ARGUMENT: invalid request: label: .*", await playground.error()
    )

    await watched.page.fill("#field-label", "product")
    await watched.page.click("#send")
    await playground.ends("done")
    assert await playground.answer() == "product: 24"
    await expect(playground.at('#events li[data-type="progress"]')).to_have_count(3)
    await expect(playground.at("#error")).to_be_hidden()
    await watched.shot("form-done")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_chat_answer_streams_over_each_transport(
    served: Served, watched: Watched, transport: str
) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    await playground.choose("default", transport)
    await playground.say("hello from chromium")
    await playground.ends("done")
    assert await playground.answer() == "You said: hello from chromium"
    await expect(playground.at("#ttfe")).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(playground.at("#stream-id")).to_have_text(re.compile(r"^[A-Za-z0-9_-]{8,}$"))
    assert int(await playground.at("#count").text_content() or "0") >= 4
    await watched.shot(f"chat-{transport}")

    # The next turn carries the conversation so far.
    await playground.say("and again")
    await playground.ends("done")
    assert await playground.answer() == "You said: and again"
    await expect(playground.at("#conversation li")).to_have_text(
        ["hello from chromium", "You said: hello from chromium", "and again"]
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_cancels_the_flow_on_the_server(
    served: Served, watched: Watched, transport: str
) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    await playground.choose("forever", transport)
    key = f"stop over {transport}"
    await playground.say(key)
    await expect(playground.at("#answer")).to_have_text("working on it")
    assert not served.flows.finished(key).is_set()
    await watched.page.click("#stop")
    # The flow's finally ran on the server: the page's Stop reached it.
    await asyncio.wait_for(served.flows.finished(key).wait(), TIMEOUT)
    await playground.ends("cancelled")
    await expect(playground.at("#error")).to_contain_text("CANCELLED")
    await expect(playground.at("#send")).to_be_enabled()
    await watched.shot(f"stopped-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_failing_flow_shows_its_error(
    served: Served, watched: Watched, transport: str
) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    await playground.choose("fail", transport)
    await playground.say("go")
    await playground.ends("error")
    assert await playground.answer() == "half an answer "
    assert await playground.error() == "UNAVAILABLE: the model went away"
    await watched.shot(f"failed-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_markup_from_a_flow_is_shown_as_text_and_never_run(
    served: Served, watched: Watched, transport: str
) -> None:
    page = watched.page
    playground = Playground(page, served.base)
    await playground.open()
    await playground.choose("xss", transport)
    await expect(playground.at("#flow-description")).to_have_text(f"Yields markup: {XSS}")
    await playground.say("show me")
    await playground.ends("done")
    assert await playground.answer() == XSS
    # Unfold every event: the JSON inside is text too.
    for summary in await playground.at("#events summary").all():
        await summary.click()
    events = await playground.at("#events").text_content() or ""
    assert "<b>custom</b>" in events
    assert "<script>alert(2)</script>" in events
    await watched.shot(f"xss-{transport}")

    await playground.choose("xss-error", transport)
    await playground.say("fail with markup")
    await playground.ends("error")
    assert await playground.error() == f"PERMISSION_DENIED: refused: {XSS}"

    assert await page.locator("img, b").count() == 0
    assert await page.evaluate("document.scripts.length") == 1
    assert watched.dialogs == []


async def test_an_api_key_typed_in_the_page_is_used_on_every_transport(
    served_with_keys: Served, watched: Watched
) -> None:
    playground = Playground(watched.page, served_with_keys.base)
    await playground.open(expect_flows=False)
    await expect(playground.at("#notice")).to_contain_text("401 UNAUTHENTICATED")
    await expect(playground.at("#flow option")).to_have_count(0)
    await watched.shot("key-missing")

    await watched.page.fill("#api-key", API_KEY)
    await watched.page.press("#api-key", "Tab")  # the field's change lists the flows again
    await expect(playground.at("#flow option")).not_to_have_count(0)
    await expect(playground.at("#notice")).to_be_hidden()
    for transport in TRANSPORTS:
        await playground.choose("default", transport)
        await playground.say(f"with the key over {transport}")
        await playground.ends("done")
        assert await playground.answer() == f"You said: with the key over {transport}"
    await watched.shot("key-accepted")

    await watched.page.fill("#api-key", "not-the-key")
    await watched.page.press("#api-key", "Tab")
    await expect(playground.at("#notice")).to_contain_text("401 UNAUTHENTICATED")
    for transport in TRANSPORTS:
        await playground.choose("default", transport)
        await playground.say(f"with a wrong key over {transport}")
        await playground.ends("error")
        assert (await playground.error()).startswith("401 UNAUTHENTICATED: ")
    await watched.shot("key-refused")


async def test_text_is_joined_and_other_events_are_folded(served: Served, watched: Watched) -> None:
    playground = Playground(watched.page, served.base)
    await playground.open()
    await playground.choose("notes")
    await playground.say("what do you know?")
    await playground.ends("done")
    assert await playground.answer() == "hello again"
    events = playground.at("#events li")
    await expect(events.locator("summary")).to_have_text(
        [re.compile(r"^#1 meta · \d+ ms$"), re.compile(r"^#3 citation · "), re.compile(r"^#5 done")]
    )
    first = events.nth(0).locator("pre")
    await expect(first).to_be_hidden()  # folded until asked
    await events.nth(1).locator("summary").click()
    await expect(events.nth(1).locator("pre")).to_contain_text('"url": "https://example.com/a"')
    await watched.page.click("#request-preview summary")
    await expect(playground.at("#request-body")).to_contain_text('"flow": "notes"')
    await watched.shot("folded-events")
