"""The component helpers themselves: each starts the real program, is usable, and stops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.components import free_port, nginx, node, port_accepts, redis_server
from tests.support import TIMEOUT


async def test_redis_server_answers_and_comes_back_on_the_same_port_after_a_restart() -> None:
    async with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=TIMEOUT)
        try:
            assert await client.set("greeting", "hello")
            assert await client.get("greeting") == b"hello"
            assert (await client.config_get("dir"))["dir"] == str(server.dir)
            assert (await client.config_get("bind"))["bind"] == "127.0.0.1"

            port, directory = server.port, server.dir
            await server.stop()
            assert not await server.ping()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.get("greeting")

            await server.start()
            assert (server.port, server.dir) == (port, directory)
            # Persistence is off, so the restarted server is empty; the client reconnects.
            assert await client.get("greeting") is None
        finally:
            await client.aclose()
        await server.kill()
        assert not await server.ping()
    assert not directory.exists()


HELLO = """
server {
    listen 127.0.0.1:%(port)d;
    location = /hello { return 200 "hello from nginx\\n"; }
    location = /missing { return 404; }
}
"""


async def test_nginx_serves_a_config_and_logs_into_its_own_directory() -> None:
    port = free_port()
    async with nginx(HELLO % {"port": port}, ports=[port]) as proxy:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as c:
            assert (await c.get("/hello")).text == "hello from nginx\n"
            assert (await c.get("/missing")).status_code == 404
        assert proxy.config.read_text().startswith("daemon off;")
        assert proxy.error_log.exists() and proxy.access_log.exists()
        prefix = proxy.prefix
    assert not await port_accepts(port)
    assert not prefix.exists()


async def test_an_nginx_config_error_fails_with_nginxs_own_message() -> None:
    port = free_port()
    with pytest.raises(RuntimeError, match='unknown directive "no_such_directive"'):
        async with nginx(f"server {{ listen 127.0.0.1:{port}; no_such_directive; }}", ports=[port]):
            pass


async def test_node_runs_a_module_with_the_npm_packages_and_arguments(tmp_path: Path) -> None:
    source = """
    import OpenAI from "openai";
    import { streamText } from "ai";
    console.log(JSON.stringify({ args: process.argv.slice(2), openai: typeof OpenAI,
                                 ai: typeof streamText }));
    """
    result = await node(source, ["one", "two"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "args": ["one", "two"],
        "openai": "function",
        "ai": "function",
    }

    failing = tmp_path / "fails.mjs"
    failing.write_text("process.stderr.write('nope'); process.exit(3);")
    result = await node(failing)
    assert (result.returncode, result.stderr) == (3, "nope")


async def test_port_accepts_is_false_for_a_closed_port() -> None:
    assert not await asyncio.wait_for(port_accepts(free_port()), TIMEOUT)
