"""The official openai npm package, from Node, against the OpenAI API of a live server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.components import node

SCRIPT = Path(__file__).with_name("sdk_client.mjs")


async def test_the_node_sdk_streams_answers_and_raises_a_mid_stream_error(base_url: str) -> None:
    # As source text: node() runs it beside a link to tests/node/node_modules.
    result = await node(SCRIPT.read_text(), [base_url])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    stream = got["stream"]
    assert len(stream["ids"]) == 1 and stream["ids"][0].startswith("chatcmpl-")
    assert stream["model"] == "gpt-4o-mini"
    assert (stream["role"], stream["text"], stream["finish"]) == (
        "assistant",
        "hello from node",
        "stop",
    )
    assert stream["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}
    assert got["whole"] == {
        "object": "chat.completion",
        "content": "hello from node",
        "finish": "stop",
    }
    assert got["failure"] == {
        "name": "APIError",
        "isAPIError": True,
        "message": "the model went away",
        "code": "UNAVAILABLE",
    }
