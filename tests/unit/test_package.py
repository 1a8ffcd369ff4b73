"""The public API and the import boundary of the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import llmbrick
import llmbrick.auth
import llmbrick.bricks
import llmbrick.client
import llmbrick.context
import llmbrick.errors
import llmbrick.events
import llmbrick.flow_control
import llmbrick.observe
import llmbrick.registry
import llmbrick.requests
import llmbrick.runtime
import llmbrick.serving
import llmbrick.store
import llmbrick.stream

ROOT = Path(__file__).resolve().parents[2]
SUBMODULES = [
    llmbrick.auth,
    llmbrick.bricks,
    llmbrick.client,
    llmbrick.context,
    llmbrick.errors,
    llmbrick.events,
    llmbrick.flow_control,
    llmbrick.observe,
    llmbrick.registry,
    llmbrick.requests,
    llmbrick.runtime,
    llmbrick.serving,
    llmbrick.store,
    llmbrick.stream,
]
TRANSPORTS = ("litestar", "grpc", "google.protobuf", "websockets", "uvicorn", "httpx", "orjson")


def test_the_top_level_exports_a_flow_authors_names_each_from_one_submodule() -> None:
    owners: dict[str, list[str]] = {}
    for module in SUBMODULES:
        for name in module.__all__:
            owners.setdefault(name, []).append(module.__name__)
            assert hasattr(module, name), f"{module.__name__}.{name}"
    shared = {name: mods for name, mods in owners.items() if len(mods) > 1}
    assert not shared, f"names exported by two submodules: {shared}"
    assert len(llmbrick.__all__) == len(set(llmbrick.__all__))
    for name in llmbrick.__all__:
        assert name in owners, f"llmbrick.{name} comes from no submodule's __all__"
        assert getattr(llmbrick, name) is getattr(sys.modules[owners[name][0]], name)
    # Models, demo bricks and adapter plumbing stay in their submodules.
    for name in ("EchoLLM", "KeywordGuard", "TextChunk", "FlowStream", "StreamStore", "Headers"):
        assert name not in llmbrick.__all__ and name in owners


def test_importing_the_core_loads_no_transport() -> None:
    code = (
        "import sys, llmbrick; "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {TRANSPORTS!r} "
        f"or m.startswith('google.protobuf') or m.startswith('llmbrick_')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_upstream_server_paths_loads_no_transport() -> None:
    # `import llmbrick.servers` (and its shim modules) loads nothing until a name is used.
    code = (
        "import sys, llmbrick.servers, llmbrick.servers.sse, llmbrick.servers.websocket, "
        "llmbrick.servers.grpc; "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {TRANSPORTS!r} "
        f"or m.startswith('google.protobuf') or m.startswith('llmbrick_')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_upstream_server_paths_name_the_adapters_classes() -> None:
    # Upstream llmbrick's spelling, e.g. `from llmbrick.servers.sse import SSEServer`.
    import llmbrick_grpc
    import llmbrick_sse
    import llmbrick_websocket
    from llmbrick.servers import grpc, sse, websocket

    assert (sse.SSEServer, sse.SSEClient) == (llmbrick_sse.SSEServer, llmbrick_sse.SSEClient)
    assert websocket.WebSocketServer is llmbrick_websocket.WebSocketServer
    assert websocket.WebSocketClient is llmbrick_websocket.WebSocketClient
    assert websocket.connect is llmbrick_websocket.connect
    assert (grpc.GrpcServer, grpc.GrpcClient) == (
        llmbrick_grpc.GrpcServer,
        llmbrick_grpc.GrpcClient,
    )
    assert grpc.RemoteBrick is llmbrick_grpc.RemoteBrick
    for module in (sse, websocket, grpc):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module, name)
        with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
            module.Nothing  # noqa: B018 - the attribute access is the test


def test_core_sources_never_import_transports_or_adapters() -> None:
    for path in (ROOT / "llmbrick").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                assert top not in {
                    "litestar",
                    "grpc",
                    "google",
                    "websockets",
                    "uvicorn",
                    "orjson",
                    "httpx",
                    "adapters",
                }, f"{path}: {line}"
                assert not top.startswith("llmbrick_"), f"{path}: {line}"


def test_py_typed_ships() -> None:
    assert (ROOT / "llmbrick" / "py.typed").exists()


def test_a_serving_process_settles_its_heap() -> None:
    """``settle_heap`` (every server's run()): the startup heap frozen, full collections rarer."""
    code = (
        "import gc; from llmbrick.serving import settle_heap, FULL_COLLECTION_EVERY; "
        "before = gc.get_threshold(); settle_heap(); after = gc.get_threshold(); "
        "print(gc.get_freeze_count() > 1000, before[:2] == after[:2], "
        "after[2] == FULL_COLLECTION_EVERY == 100)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["True", "True", "True"], result.stderr
