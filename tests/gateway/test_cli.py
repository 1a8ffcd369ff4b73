"""The ``llmbrick`` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import asyncio
import re
import textwrap
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx

from llmbrick_gateway import connect
from tests.gateway.cli_support import gateway, run
from tests.support import TIMEOUT

SLOW_APP = textwrap.dedent(
    """
    import asyncio
    import os
    from llmbrick import FlowRegistry

    registry = FlowRegistry()

    @registry.flow("default")
    async def paced(request):
        gate = request.metadata.get("gate")
        for n in range(int(request.metadata["n"])):
            yield {"type": "text", "text": f"{n} "}
            await asyncio.sleep(float(request.metadata["pace"]))
            while gate and n == 3 and not os.path.exists(gate):
                await asyncio.sleep(0.01)  # held until the test lets it go on
    """
)


async def test_serve_the_demo_and_call_it_over_every_transport() -> None:
    async with gateway() as served:
        assert set(served.urls) == {"SSE", "WebSocket", "gRPC", "flows", "health"}
        http = served.urls["SSE"].removesuffix("/chat/completions")
        for url in (http, served.urls["WebSocket"], served.urls["gRPC"]):
            code, out, err = await run("call", url, "--message", "hello there")
            assert (code, out) == (0, "You said: hello there\n"), err
        code, out, err = await run("call", served.urls["gRPC"], "-m", "a bomb")
        assert code == 1
        assert "error PERMISSION_DENIED: keyword-guard: blocked word 'bomb'" in err
        code, out, _ = await run("call", http, "--events", "-m", "hi")
        assert out.splitlines()[-1] == '{"type": "done", "id": "4", "progress": "DONE"}'
        returncode, stderr = await served.stop()
    assert returncode == 0
    assert re.search(r"stream end id=\S+ flow=default transport=sse .*outcome=ok", stderr)
    assert "hello there" not in stderr  # no prompt text in the logs at INFO


async def test_graceful_shutdown_lets_running_streams_finish(tmp_path: Path) -> None:
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    # The streams wait halfway until the test has seen the gateway draining: finished
    # streams would let it exit before the test asks it anything.
    gate = tmp_path / "go-on"
    request = {
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"n": 8, "pace": 0.05, "gate": str(gate)},
    }
    async with gateway(f"{app}:registry") as served:
        http = served.urls["SSE"].removesuffix("/chat/completions")
        urls = [http, served.urls["WebSocket"], served.urls["gRPC"]]
        async with asyncio.TaskGroup() as group:
            first = [asyncio.Event() for _ in urls]
            tasks = [
                group.create_task(_read(u, request, f)) for u, f in zip(urls, first, strict=True)
            ]
            for started in first:
                await asyncio.wait_for(started.wait(), TIMEOUT)
            stopping = group.create_task(served.stop())
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                # Draining: health says so and new streams are refused (polled, bounded).
                for _ in range(200):
                    health = await client.get(served.urls["health"])
                    if health.status_code == 503:
                        break
                assert health.status_code == 503
                refused = await client.post(served.urls["SSE"], json=request)
                assert refused.json()["error"]["code"] == "UNAVAILABLE"
            gate.touch()
        returncode, _ = stopping.result()
    assert returncode == 0
    for task in tasks:
        events = task.result()
        assert [e.get("text") for e in events] == [f"{n} " for n in range(8)] + [None]
        assert events[-1]["type"] == "done"


async def test_streams_past_the_drain_timeout_end_with_unavailable(tmp_path: Path) -> None:
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    request = {
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"n": 1000, "pace": 0.05},
    }
    async with gateway(str(app), "--drain-timeout", "0.3") as served:
        http = served.urls["SSE"].removesuffix("/chat/completions")
        urls = [http, served.urls["WebSocket"], served.urls["gRPC"]]
        first = [asyncio.Event() for _ in urls]
        tasks = [
            asyncio.create_task(_read(u, request, f)) for u, f in zip(urls, first, strict=True)
        ]
        for started in first:
            await asyncio.wait_for(started.wait(), TIMEOUT)
        returncode, stderr = await served.stop()
        results = await asyncio.gather(*tasks)
    assert returncode == 0
    assert "ended 3 stream(s) still running after the drain timeout" in stderr
    for events in results:
        assert events[-1]["type"] == "error", events[-3:]
        assert events[-1]["error"]["code"] == "UNAVAILABLE"
        assert [e["id"] for e in events] == [str(n) for n in range(1, len(events) + 1)]


async def _read(url: str, request: dict[str, Any], first: asyncio.Event) -> list[Any]:
    events = []
    async with connect(url) as client, aclosing(client.stream("default", request)) as stream:
        async for event in stream:
            events.append(event)
            first.set()
    return events


async def test_transports_and_settings_from_the_environment() -> None:
    env = {"LLMBRICK_TRANSPORTS": "sse", "LLMBRICK_MAX_STREAMS": "2"}
    async with gateway(env=env) as served:
        assert set(served.urls) == {"SSE", "flows", "health"}
        returncode, _ = await served.stop()
    assert returncode == 0


async def test_flows_lists_a_targets_flows() -> None:
    code, out, err = await run("flows", "examples/multi_flow.py:server")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "default: Echo chat."
    assert lines[2] == "shout: Answers in capitals, word by word."
    assert lines[4] == "sum: Adds numbers and reports the running total."
    assert lines[5] == "    requires numbers; fields: numbers"
    code, out, _ = await run("flows", "--json")
    assert code == 0 and '"requestSchema"' in out


async def test_target_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text("pipeline = 42\n")
    cases = [
        (["serve", "missing.py"], "llmbrick: no such file: missing.py"),
        (["serve", "no_such_package.mod:obj"], "llmbrick: cannot import 'no_such_package.mod'"),
        (["serve", f"{wrong}:pipeline"], "is a int; expected a Pipeline, a Brick"),
        (["serve", f"{wrong}:other"], "has no attribute 'other'"),
        (["flows", "llmbrick"], "llmbrick defines nothing to serve: no Pipeline, Brick,"),
        (["call", "ftp://x", "-m", "x"], "use http://HOST:PORT (SSE), ws://HOST:PORT/ws"),
        (["call", "http://127.0.0.1:1"], "give --message TEXT (a chat flow) or --request JSON"),
    ]
    for args, message in cases:
        code, _, err = await run(*args, env={"LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0"})
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    code, _, err = await run("serve", "--transports", "sse,carrier-pigeon")
    assert code == 2 and "choose from sse,websocket,grpc" in err
