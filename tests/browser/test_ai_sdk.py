"""The AI SDK's own client (npm ``ai``, unmodified) against the UI message stream of a live gateway.

``tests/node/ai_ui_chat.mjs`` runs the SDK's chat logic (``AbstractChat``, what
``useChat`` wraps) with its ``DefaultChatTransport``, so the request shape, the
stream parser and the chunk schema are the SDK's, not ours.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.browser.conftest import Served
from tests.components import NODE_PACKAGES, node
from tests.support import TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCRIPT = NODE_PACKAGES / "ai_ui_chat.mjs"


async def chat(served: Served, scenario: str) -> dict[str, Any]:
    """What the SDK's chat held after ``scenario`` (see the script)."""
    result = await node(SCRIPT, [scenario, served.base + "/v1/ui/chat"])
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


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
