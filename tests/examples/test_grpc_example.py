"""The gRPC examples run and answer as their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from llmbrick_grpc import GrpcClient
from tests.adapters.grpc_support import running, threaded_server
from tests.support import TIMEOUT, serve_asgi, sse_events

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_server_and_the_client_examples() -> None:
    server = load("grpc_server")
    server.llm.delay = 0
    client = load("grpc_client")
    async with running(server.server) as address:
        lines = await client.main(address)
        async with GrpcClient(address, timeout=TIMEOUT) as direct:
            bricks = await direct.invoke("countdown", {"start": 1})
    assert lines[0] == "flows: default, countdown"
    assert lines[1:5] == [
        " 1 text  'hello '",
        " 2 text  'over '",
        " 3 text  'gRPC'",
        " 4 done  ''",
    ]
    assert lines[5] == "countdown: 2 1 0"
    assert lines[6].startswith("refused: {'code': 'PERMISSION_DENIED'")
    assert lines[7].startswith("error: NOT_FOUND: no flow named 'no-such-flow'")
    assert [e["data"] for e in bricks["events"][:-1]] == [
        {"n": 1, "last": False},
        {"n": 0, "last": True},
    ]


async def test_the_remote_brick_gateway() -> None:
    server = load("grpc_server")
    server.llm.delay = 0
    gateway = load("grpc_remote_brick")
    with threaded_server(server.server) as address:
        from llmbrick_sse import SSEServer

        async with serve_asgi(SSEServer(gateway.build(address)).app) as http:
            events = await sse_events(
                http, {"messages": [{"role": "user", "content": "hello from afar"}]}
            )
            refused = await sse_events(
                http, {"messages": [{"role": "user", "content": "my password"}]}
            )
    assert "".join(e.get("text", "") for e in events) == "hello from afar"
    assert refused[-1]["error"]["code"] == "PERMISSION_DENIED"
