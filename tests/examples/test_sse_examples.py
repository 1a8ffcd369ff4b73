"""The SSE examples run and answer as their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support import serve_asgi, sse_events

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


async def test_chat_quick_start() -> None:
    chat = load("chat")
    chat.pipeline.bricks[-1].delay = 0
    async with serve_asgi(chat.server.app) as address:
        events = await sse_events(address, ask("hello there"))
        assert "".join(e.get("text", "") for e in events) == "hello there"
        [rejected] = await sse_events(address, ask("my password is 1234"))
        assert rejected["error"]["code"] == "PERMISSION_DENIED"


async def test_multi_flow() -> None:
    example = load("multi_flow")
    async with serve_asgi(example.server.app) as address:
        echo = await sse_events(address, ask("a b"))
        assert [e.get("text") for e in echo[:-1]] == ["a ", "b"]
        shout = await sse_events(address, ask("a b", flow="shout"))
        assert shout[0]["metadata"] == {"words": 2}
        assert "".join(e.get("text", "") for e in shout) == "A B "
        total = await sse_events(address, {"flow": "sum", "numbers": [1, 2, 3]})
        assert [e["data"]["total"] for e in total[:-1]] == [1, 3, 6]
        assert {e["type"] for e in total[:-1]} == {"progress"}
