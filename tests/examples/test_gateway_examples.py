"""The gateway examples: RAG over every transport, the browser page, a brick in another process."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from llmbrick_gateway import Gateway, connect
from tests.examples.test_sse_examples import load
from tests.support import TIMEOUT, parse_sse, serve_gateway

ROOT = Path(__file__).resolve().parents[2]


async def text_over(url: str, request: dict[str, Any]) -> str:
    async with connect(url) as client:
        result = await client.invoke("default", request)
    assert result["error"] is None, result["error"]
    return result["text"]


async def test_rag_pipeline_over_every_transport() -> None:
    rag = load("rag")
    rag.pipeline.bricks[2].delay = 0
    request = {"messages": [{"role": "user", "content": "what is the gateway"}]}
    async with serve_gateway(Gateway(rag.pipeline, http_port=0, grpc_port=0, out=None)) as gateway:
        texts = [
            await text_over(gateway.urls[transport], request)
            for transport in ("sse", "websocket", "grpc")
        ]
    assert texts == ["[2 DOCUMENT(S): GATEWAY, BRICKS] WHAT IS THE GATEWAY"] * 3


async def test_browser_page_is_served_beside_both_endpoints() -> None:
    browser = load("browser/app")
    async with serve_gateway(browser.build(http_port=0, grpc_port=0, out=None)) as gateway:
        base = gateway.urls["sse"].removesuffix("/chat/completions")
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            html = page.text
            # What the page's script does, step by step, against the same origin.
            assert 'fetch("/chat/completions"' in html and "new WebSocket(" in html
            assert "insertAdjacentHTML" not in html and "innerHTML" not in html
            request = {"messages": [{"role": "user", "content": "hi page"}]}
            response = await client.post(
                "/chat/completions", json=request, headers={"accept": "text/event-stream"}
            )
            texts = [data.get("text", "") for _, _, data in parse_sse(response.text)]
            assert "".join(texts) == "You said: hi page"
        assert await text_over(gateway.urls["websocket"], request) == "You said: hi page"


async def test_remote_brick_served_by_a_second_process() -> None:
    brick_server = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/grpc_server.py",
        "0",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert brick_server.stderr is not None
        port = None
        while port is None:
            line = (await asyncio.wait_for(brick_server.stderr.readline(), TIMEOUT)).decode()
            assert line, "the brick server exited"
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = found and found.group(1)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmbrick_gateway",
            "serve",
            "examples/grpc_remote_brick.py",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "LLMBRICK_REMOTE_BRICK": f"127.0.0.1:{port}"},
        )
        try:
            assert gateway.stdout is not None
            urls = {}
            while "gRPC" not in urls:
                line = (await asyncio.wait_for(gateway.stdout.readline(), TIMEOUT)).decode()
                assert line, "the gateway exited"
                parts = line.split()
                if len(parts) == 2:
                    urls[parts[0]] = parts[1]
            request = {"messages": [{"role": "user", "content": "hello from afar"}]}
            assert await text_over(urls["gRPC"], request) == "hello from afar"
            async with connect(urls["SSE"]) as client:
                refused = await client.invoke(
                    "default", {"messages": [{"role": "user", "content": "my password"}]}
                )
            assert refused["error"] is not None
            assert refused["error"]["code"] == "PERMISSION_DENIED"
        finally:
            gateway.terminate()
            assert await asyncio.wait_for(gateway.wait(), TIMEOUT) == 0
    finally:
        brick_server.terminate()
        await asyncio.wait_for(brick_server.wait(), TIMEOUT)


async def test_the_openai_pipeline_reaches_a_model_behind_another_gateway(
    monkeypatch: Any,
) -> None:
    """The example, configured by environment only, against an echo behind an OpenAI API."""
    from llmbrick import Pipeline
    from llmbrick.bricks import EchoLLM

    upstream = Gateway(
        Pipeline().add_brick(EchoLLM(prefix="model says: ")),
        http_port=0,
        transports=["sse"],
        openai=True,
        out=None,
    )
    async with serve_gateway(upstream) as model:
        base = model.urls["sse"].removesuffix("/chat/completions") + "/v1"
        monkeypatch.setenv("OPENAI_BASE_URL", base)
        monkeypatch.setenv("OPENAI_API_KEY", "not-checked")
        monkeypatch.setenv("LLMBRICK_MODEL", "default")
        example = load("openai_pipeline")
        served = Gateway(example.pipeline, http_port=0, grpc_port=0, out=None)
        async with serve_gateway(served) as gateway:
            request = {"messages": [{"role": "user", "content": "hello there"}]}
            for transport in ("sse", "websocket", "grpc"):
                assert await text_over(gateway.urls[transport], request) == (
                    "model says: hello there"
                )
            async with connect(gateway.urls["grpc"]) as client:
                refused = await client.invoke(
                    "default", {"messages": [{"role": "user", "content": "a bomb"}]}
                )
        await example.pipeline.aclose()
    assert refused["error"] is not None and refused["error"]["code"] == "PERMISSION_DENIED"
