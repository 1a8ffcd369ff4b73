"""JSON log lines: the runtime's own records, formatted one object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llmbrick import ApiKeyAuth, ChatRequest, Event, FlowRegistry, FlowRuntime, RequestContext
from llmbrick_telemetry import JsonFormatter
from tests.telemetry.support import KEY, KEYS, PROMPT, chat, texts


class Lines:
    """A logger whose records go through a handler with the JSON formatter."""

    def __init__(self, name: str) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = True
        self.logger.setLevel(logging.NOTSET)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def parsed(self) -> list[dict[str, Any]]:
        # One JSON object per line, nothing else.
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def lines(request: pytest.FixtureRequest) -> Iterator[Lines]:
    captured = Lines(f"llmbrick.telemetry-test.{request.node.name}")
    yield captured
    captured.close()


async def crashing(request: ChatRequest) -> AsyncIterator[Event]:
    yield {"type": "text", "text": "a"}
    raise RuntimeError("the flow has a bug")


async def test_the_runtime_s_stream_lines_carry_their_fields_at_the_top_level(
    lines: Lines,
) -> None:
    registry = FlowRegistry()
    registry.register("texts", texts)
    registry.register("crashing", crashing)
    runtime = FlowRuntime(registry, logger=lines.logger, authenticator=ApiKeyAuth(KEYS))
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": "req-7"}
    context = RequestContext("sse", headers=headers)
    [e async for e in runtime.run("texts", chat("texts"), context=context)]
    context = RequestContext("grpc", headers=headers)
    [e async for e in runtime.run("crashing", chat("crashing"), context=context)]

    start, end, _, crash, crash_end = lines.parsed()
    assert set(start) == {
        "time",
        "level",
        "logger",
        "message",
        "stream_id",
        "flow",
        "transport",
        "request_id",
        "principal",
    }
    assert start["level"] == "INFO" and start["logger"] == lines.logger.name
    assert start["message"].startswith("stream start id=")
    assert start["time"].endswith("+00:00") and "T" in start["time"]
    assert (start["flow"], start["transport"], start["request_id"], start["principal"]) == (
        "texts",
        "sse",
        "req-7",
        "alice",
    )
    assert end["stream_id"] == start["stream_id"]
    assert (end["outcome"], end["events"]) == ("ok", 3)
    assert isinstance(end["duration_ms"], float)

    assert crash["level"] == "ERROR" and crash["message"].endswith("crashed")
    assert "exception" in crash
    assert crash["exception"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: the flow has a bug" in crash["exception"]
    assert (crash_end["flow"], crash_end["outcome"]) == ("crashing", "INTERNAL")
    # Neither the key nor the prompt reaches a line.
    assert KEY not in lines.text and PROMPT not in lines.text


def test_only_the_llmbrick_scalars_are_added_and_never_over_the_line_s_own_keys(
    lines: Lines,
) -> None:
    lines.logger.info(
        "hello %s\nsecond line with é",
        "world",
        extra={
            "llmbrick": {
                "message": "spoofed",
                "level": "spoofed",
                "flow": "chat",
                "events": 2,
                "ratio": 0.5,
                "kept": True,
                "principal": None,
                "request": {"messages": [PROMPT]},
                "headers": [KEY],
            },
            "prompt": PROMPT,
        },
    )
    try:
        raise ValueError("boom")
    except ValueError:
        lines.logger.warning("caught", exc_info=True, stack_info=True)
    lines.logger.info("no fields", extra={"llmbrick": "not a mapping"})
    assert len(lines.text.splitlines()) == 3  # the newline in a message stays escaped
    first, caught, plain = lines.parsed()
    assert first["message"] == "hello world\nsecond line with é"
    assert first["level"] == "INFO"
    assert {key: first[key] for key in ("flow", "events", "ratio", "kept", "principal")} == {
        "flow": "chat",
        "events": 2,
        "ratio": 0.5,
        "kept": True,
        "principal": None,
    }
    assert "request" not in first and "headers" not in first and "prompt" not in first
    assert "é" in lines.text  # written as UTF-8, not escaped
    assert caught["exception"].endswith("ValueError: boom")
    assert caught["stack"].startswith("Stack (most recent call last)")
    assert set(plain) == {"time", "level", "logger", "message"}
    assert KEY not in lines.text and PROMPT not in lines.text
