"""Fixtures: the test flows on a real socket, served by ``SSEServer`` (it mounts the OpenAI API)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from llmbrick import FlowRuntime
from llmbrick_sse import SSEServer
from tests.openai.flows import Flows
from tests.support import TIMEOUT, serve_asgi


@pytest.fixture
def flows() -> Flows:
    return Flows()


@pytest.fixture
async def address(flows: Flows) -> AsyncIterator[str]:
    async with serve_asgi(SSEServer(FlowRuntime(flows.registry)).app) as address:
        yield address


@pytest.fixture
def base_url(address: str) -> str:
    return f"http://{address}/v1"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK's async client; no retries, so each error surfaces at once."""
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-unused", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


@pytest.fixture
def sync_client(base_url: str) -> Iterator[openai.OpenAI]:
    """The SDK's blocking client: call it through ``asyncio.to_thread``, the server runs here."""
    with openai.OpenAI(
        base_url=base_url, api_key="sk-unused", max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client
