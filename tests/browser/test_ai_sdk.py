"""The AI SDK's own client (npm ``ai``, unmodified) against the UI message stream of a live gateway.

``tests/node/ai_ui_scenarios.mjs`` runs the SDK's chat logic (``AbstractChat``, what
``useChat`` wraps) with its ``DefaultChatTransport``, so the request shape, the
stream parser and the chunk schema are the SDK's, not ours. The scenarios run in
Node (``ai_ui_chat.mjs``) and in Chromium, where the SDK's ES modules load
straight from ``tests/node/node_modules`` through an import map (no bundler).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import MediaType, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from playwright.async_api import expect

from llmbrick import MemoryStore
from tests.browser.conftest import Served, Watched, serving
from tests.browser.flows import Flows
from tests.components import NODE_PACKAGES, node
from tests.support import TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCRIPT = NODE_PACKAGES / "ai_ui_chat.mjs"
MODULES = "/node/node_modules"
#: Where each package the SDK imports has its ES module entry (its package.json "import").
IMPORTS = {
    "ai": f"{MODULES}/ai/dist/index.mjs",
    "@ai-sdk/gateway": f"{MODULES}/@ai-sdk/gateway/dist/index.mjs",
    "@ai-sdk/provider": f"{MODULES}/@ai-sdk/provider/dist/index.mjs",
    "@ai-sdk/provider-utils": f"{MODULES}/@ai-sdk/provider-utils/dist/index.mjs",
    "@opentelemetry/api": f"{MODULES}/@opentelemetry/api/dist/index.mjs",
    "eventsource-parser": f"{MODULES}/eventsource-parser/dist/index.js",
    "eventsource-parser/stream": f"{MODULES}/eventsource-parser/dist/stream.js",
    "zod": f"{MODULES}/zod/index.js",
    "zod/v3": f"{MODULES}/zod/v3/index.js",
    "zod/v4": f"{MODULES}/zod/v4/index.js",
    # The Vercel AI Gateway provider's OIDC helpers: server-side, published as CommonJS only
    # (a browser cannot import it), and never called by a chat. A bundler would drop it.
    "@vercel/oidc": "/sdk/vercel-oidc.mjs",
}
OIDC = (
    "export const getContext = () => ({});\n"
    "export const getVercelOidcToken = async () => {"
    " throw new Error('no Vercel OIDC token in a browser'); };\n"
)
PAGE = f"""<!doctype html>
<meta charset="utf-8">
<title>loading</title>
<script type="importmap">{json.dumps({"imports": IMPORTS})}</script>
<script type="module">
import {{ scenarios }} from "/node/ai_ui_scenarios.mjs";
window.scenarios = scenarios(new URL("/v1/ui/chat", location.href).href);
document.title = "ready";
</script>
"""


@get("/sdk", media_type=MediaType.HTML, name="sdk-page")
async def sdk_page() -> str:
    """A page that loads the SDK's modules and the scenarios, as an app's bundle would."""
    return PAGE


@get("/sdk/vercel-oidc.mjs", media_type="text/javascript", name="sdk-oidc")
async def vercel_oidc() -> str:
    return OIDC


@get("/node/{file:path}", name="sdk-node-files")
async def node_file(file: FromPath[str]) -> Response[bytes]:
    """A file under tests/node (the scenarios and the installed packages), nothing outside it."""
    root = NODE_PACKAGES.resolve()
    path = (root / file.lstrip("/")).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFoundException()
    kind = "text/javascript" if path.suffix in (".js", ".mjs") else "application/json"
    return Response(path.read_bytes(), media_type=kind)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[Served]:
    """The test gateway, also serving the SDK's modules for the browser."""
    async with serving(routes=[sdk_page, vercel_oidc, node_file]) as value:
        yield value


async def chat(served: Served, scenario: str, *args: str) -> dict[str, Any]:
    """What the SDK's chat held after ``scenario`` (see the script), run in Node."""
    result = await node(SCRIPT, [scenario, served.base + "/v1/ui/chat", *args])
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


async def in_chromium(watched: Watched, served: Served, scenario: str, *args: str) -> Any:
    """What the SDK's chat held after ``scenario``, run in the page."""
    await watched.page.goto(served.base + "/sdk")
    await expect(watched.page).to_have_title("ready")
    return await watched.page.evaluate(
        "([name, args]) => window.scenarios[name](...args)", [scenario, list(args)]
    )


def texts(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


async def test_text_streams_into_the_sdks_messages(served: Served) -> None:
    got = await chat(served, "text")
    assert (got["status"], got["error"]) == ("ready", None)
    roles = [message["role"] for message in got["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    first, second = got["messages"][1], got["messages"][3]
    assert texts(first) == "You said: hello from the sdk"
    assert texts(second) == "You said: second turn"
    assert [part["type"] for part in first["parts"]] == ["step-start", "text"]
    assert first["parts"][1]["state"] == "done"
    assert first["id"].startswith("msg-") and first["id"] != second["id"]


async def test_a_flow_error_is_the_sdks_error(served: Served) -> None:
    got = await chat(served, "failure")
    assert got["status"] == "error"
    assert got["error"] == "UNAVAILABLE: the model went away"
    assert got["onError"] == ["UNAVAILABLE: the model went away"]
    # What streamed before the error stays, as the SDK keeps it.
    assert texts(got["messages"][-1]) == "half an answer "


async def test_a_refused_request_is_the_sdks_error_with_the_servers_body(served: Served) -> None:
    got = await chat(served, "refused")
    assert got["status"] == "error"
    error = json.loads(got["error"])["error"]
    assert error["code"] == "NOT_FOUND"
    assert [message["role"] for message in got["messages"]] == ["user"]


async def test_stop_aborts_and_the_server_cancels_the_flow(served: Served) -> None:
    finished = served.flows.finished("stop from the sdk")
    got = await chat(served, "stop")
    # The flow's finally ran on the server because the SDK's abort closed the connection.
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    assert (got["status"], got["error"]) == ("ready", None)
    assert texts(got["messages"][-1]) == "working on it"


async def test_a_client_side_tool_goes_round_trip(served: Served) -> None:
    served.flows.weather_requests.clear()
    got = await chat(served, "tools")
    assert (got["status"], got["error"]) == ("ready", None)
    assert got["calls"] == [
        {"toolName": "weather", "toolCallId": "call-1", "input": {"city": "Paris"}}
    ]
    # The resubmission continued the same assistant message (the SDK sent its id back).
    user, assistant = got["messages"]
    assert user["role"] == "user"
    kinds = [part["type"] for part in assistant["parts"]]
    assert kinds == ["step-start", "text", "tool-weather", "data-meta", "step-start", "text"]
    tool = assistant["parts"][2]
    assert (tool["state"], tool["input"], tool["output"]) == (
        "output-available",
        {"city": "Paris"},
        {"celsius": 21},
    )
    assert texts(assistant) == "Let me look. It is 21 degrees in Paris."
    # The flow saw the exchange as chat messages: the call, then the tool's answer.
    first, second = served.flows.weather_requests
    assert [m.role for m in first.messages] == ["user"]
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    call = second.messages[1]
    assert call.content == "Let me look. "
    assert call.tool_calls == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert (second.messages[2].tool_call_id, second.messages[2].content) == (
        "call-1",
        '{"celsius":21}',
    )
    assert second.session_id == first.session_id is not None


async def test_meta_and_custom_events_arrive_as_data_parts(served: Served) -> None:
    got = await chat(served, "data")
    assert got["onData"] == ["data-meta", "data-citation"]
    parts = got["messages"][-1]["parts"]
    # Data between two texts does not split the text part: it is one part, one id.
    assert [part["type"] for part in parts] == ["step-start", "data-meta", "text", "data-citation"]
    assert parts[1] == {
        "type": "data-meta",
        "id": "1",
        "data": {"metadata": {"intent": "greeting"}},
    }
    assert parts[3] == {
        "type": "data-citation",
        "id": "3",
        "data": {"data": {"url": "https://example.com/a"}},
    }
    assert texts(got["messages"][-1]) == "hello again"


async def test_in_chromium_text_streams_and_stop_cancels_the_flow(
    served: Served, watched: Watched
) -> None:
    got = await in_chromium(watched, served, "text")
    assert (got["status"], got["error"]) == ("ready", None)
    assert [texts(message) for message in got["messages"]] == [
        "hello from the sdk",
        "You said: hello from the sdk",
        "second turn",
        "You said: second turn",
    ]
    finished = served.flows.finished("stop from chromium")
    got = await in_chromium(watched, served, "stop", "stop from chromium")
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    assert texts(got["messages"][-1]) == "working on it"


async def test_in_chromium_errors_and_a_tool_round_trip(served: Served, watched: Watched) -> None:
    got = await in_chromium(watched, served, "failure")
    assert (got["status"], got["error"]) == ("error", "UNAVAILABLE: the model went away")
    got = await in_chromium(watched, served, "tools")
    assert (got["status"], got["error"]) == ("ready", None)
    assert texts(got["messages"][-1]) == "Let me look. It is 21 degrees in Paris."


async def test_a_reloaded_page_resumes_its_chats_stream() -> None:
    """``resumeStream()`` (``useChat({resume: true})``) reads the chat's kept stream again."""
    flows = Flows()

    @post("/test/release/{key:str}", status_code=204, name="test-release")
    async def release(key: FromPath[str]) -> None:
        flows.released(key).set()

    async with serving(store=MemoryStore(), flows=flows, routes=[release]) as kept:
        got = await chat(kept, "resume", kept.base + "/test/release")
    key = "resume from the sdk"
    assert got["released"] == 204
    # The stopped page had part one; the flow ran on (grace) instead of being cancelled.
    assert texts(got["before"]["messages"][-1]) == "part one; "
    assert key not in flows.cancelled and flows.finished(key).is_set()
    # The reloaded page got the whole answer, as one assistant message with the same id.
    assert (got["status"], got["error"]) == ("ready", None)
    resumed = got["messages"][-1]
    assert resumed["role"] == "assistant" and texts(resumed) == "part one; part two"
    assert resumed["id"] == got["before"]["messages"][-1]["id"]
