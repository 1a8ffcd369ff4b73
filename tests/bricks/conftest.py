"""Fixtures for the brick tests: a live OpenAI-compatible upstream and bricks pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmbrick.bricks.openai import OpenAILLM
from tests.bricks.upstream import Upstream
from tests.support import serve_asgi

#: The key every test brick sends; no message a client sees may contain it.
KEY = "sk-test-0123456789abcdef-secret"

MakeBrick = Callable[..., OpenAILLM]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    app = Upstream()
    async with serve_asgi(app, lifespan="off") as address:
        app.base_url = f"http://{address}/v1"
        yield app


@pytest.fixture
async def make_brick(upstream: Upstream) -> AsyncIterator[MakeBrick]:
    """Builds bricks on the upstream (no retries unless asked) and closes them afterwards."""
    made: list[OpenAILLM] = []

    def make(model: str | None = "text", **options: Any) -> OpenAILLM:
        options.setdefault("base_url", upstream.base_url)
        options.setdefault("api_key", KEY)
        options.setdefault("max_retries", 0)
        brick = OpenAILLM(model, **options)
        made.append(brick)
        return brick

    yield make
    for brick in made:
        await brick.aclose()
