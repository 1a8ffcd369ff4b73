"""The minimal browser page's own script, run in Node.js against a live gateway.

Node has ``fetch``, streams and (with ``--experimental-websocket``) ``WebSocket``, the
same APIs the page uses in a browser; a tiny stand-in for ``document`` is all it needs.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import httpx

from tests.examples.test_sse_examples import load
from tests.support import TIMEOUT, serve_gateway

DRIVER = """
const elements = {message: {value: %(message)s}, output: {textContent: ""}, sse: {}, ws: {}};
globalThis.document = {getElementById: (id) => elements[id]};
globalThis.location = {protocol: "http:", host: %(host)s};
const realFetch = globalThis.fetch;
globalThis.fetch = (url, options) => realFetch(new URL(url, "http://" + %(host)s), options);
%(script)s
const results = {};
await elements.sse.onclick();
results.sse = elements.output.textContent;
elements.ws.onclick();
const finished = () => elements.output.textContent.includes("[done]");
for (let waited = 0; !finished() && waited < 10000; waited += 10) {
  await new Promise((resolve) => setTimeout(resolve, 10));
}
results.websocket = elements.output.textContent;
socket.close();
console.log(JSON.stringify(results));
"""


async def test_the_pages_script_streams_over_sse_and_websocket(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js runs the page's script; it ships with the machine image"
    browser = load("browser/app")
    async with serve_gateway(browser.build(http_port=0, grpc_port=0, out=None)) as gateway:
        host = gateway.urls["sse"].removeprefix("http://").removesuffix("/chat/completions")
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            html = (await client.get(f"http://{host}/")).text
        found = re.search(r"<script>(.*)</script>", html, re.S)
        assert found is not None
        driver = tmp_path / "driver.mjs"
        driver.write_text(
            DRIVER
            % {
                "message": json.dumps("hello from node"),
                "host": json.dumps(host),
                "script": found.group(1),
            }
        )
        process = await asyncio.create_subprocess_exec(
            node,
            "--experimental-websocket",
            "--no-warnings",
            str(driver),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0, err.decode()
    results = json.loads(out)
    assert results == {
        "sse": "You said: hello from node\n[done]",
        "websocket": "You said: hello from node\n[done]",
    }
