"""Which object ``llmbrick serve file.py`` serves when the target names none."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmbrick import FlowRegistry, FlowRuntime, Pipeline
from llmbrick.bricks import EchoLLM
from llmbrick_gateway import TargetError, load_target


@pytest.fixture(autouse=True)
def _forget_loaded_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # load_target puts the app's folder on sys.path and the module in sys.modules,
    # as serving it needs; each test starts and ends without those of the others.
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith("llmbrick_target_")]:
        del sys.modules[name]


def app(tmp_path: Path, source: str) -> str:
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_a_registry_and_its_runtime_are_one_app_and_the_runtime_is_served(
    tmp_path: Path,
) -> None:
    target = app(
        tmp_path,
        """
        from llmbrick import FlowRegistry, FlowRuntime
        registry = FlowRegistry()
        runtime = FlowRuntime(registry, timeout=7)
        """,
    )
    served = load_target(target)
    assert isinstance(served, FlowRuntime) and served.timeout == 7  # its settings kept


def test_a_server_and_the_pipeline_it_serves_are_one_app(tmp_path: Path) -> None:
    # The README's ten lines: a pipeline, a server on it, one more flow on the server.
    target = app(
        tmp_path,
        """
        from llmbrick import Pipeline
        from llmbrick.bricks import EchoLLM, KeywordGuard
        from llmbrick_sse import SSEServer

        pipeline = Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM())
        server = SSEServer(pipeline)

        @server.flow("shout")
        async def shout(request):
            yield {"type": "text", "text": "HI"}
        """,
    )
    served = load_target(target)
    assert isinstance(served, FlowRuntime)
    assert served.registry.names() == ["default", "shout"]


def test_bricks_inside_a_served_pipeline_are_parts_not_apps(tmp_path: Path) -> None:
    target = app(
        tmp_path,
        """
        from llmbrick import Pipeline
        from llmbrick.bricks import EchoLLM, KeywordGuard
        from llmbrick_grpc import GrpcServer

        llm = EchoLLM()
        guard = KeywordGuard(["bomb"])
        pipeline = Pipeline().add_brick(guard).add_brick(llm)
        server = GrpcServer(pipeline, bricks=[llm])
        """,
    )
    served = load_target(target)
    assert isinstance(served, FlowRuntime) and served.registry.names() == ["default"]


def test_servers_sharing_one_runtime_are_one_app(tmp_path: Path) -> None:
    target = app(
        tmp_path,
        """
        from llmbrick import FlowRegistry, FlowRuntime
        from llmbrick.bricks import EchoLLM
        from llmbrick_sse import SSEServer
        from llmbrick_websocket import WebSocketServer

        registry = FlowRegistry()
        registry.register("echo", EchoLLM())
        runtime = FlowRuntime(registry)
        sse = SSEServer(runtime)
        ws = WebSocketServer(runtime)
        """,
    )
    served = load_target(target)
    assert isinstance(served, FlowRuntime) and served.registry.names() == ["echo"]


def test_imported_classes_modules_and_functions_are_not_candidates(tmp_path: Path) -> None:
    target = app(
        tmp_path,
        """
        import llmbrick
        from llmbrick import FlowRegistry, LLMBrick, Pipeline
        from llmbrick.bricks import EchoLLM
        from llmbrick.serving import as_runtime
        from llmbrick_gateway import demo_pipeline

        class Shouting(LLMBrick):
            pass

        pipeline = Pipeline(description="the one").add_brick(EchoLLM())
        """,
    )
    served = load_target(target)
    assert isinstance(served, Pipeline) and served.description == "the one"


def test_a_single_brick_is_served(tmp_path: Path) -> None:
    target = app(tmp_path, "from llmbrick.bricks import EchoLLM\nllm = EchoLLM()\n")
    assert isinstance(load_target(target), EchoLLM)


def test_several_apps_are_refused_with_their_names(tmp_path: Path) -> None:
    target = app(
        tmp_path,
        """
        from llmbrick import FlowRegistry, Pipeline
        from llmbrick.bricks import EchoLLM
        pipeline = Pipeline().add_brick(EchoLLM())
        registry = FlowRegistry()
        registry.register("other", Pipeline().add_brick(EchoLLM()))
        """,
    )
    with pytest.raises(TargetError) as refused:
        load_target(target)
    assert str(refused.value) == (
        f"{target} defines 2 things to serve: pipeline (Pipeline), registry (FlowRegistry); "
        f"pick one with {target}:NAME, e.g. {target}:pipeline"
    )
    assert isinstance(load_target(f"{target}:registry"), FlowRegistry)
    assert isinstance(load_target(f"{target}:pipeline"), Pipeline)


def test_a_module_that_builds_its_app_lazily_is_asked_for_it(tmp_path: Path) -> None:
    target = app(
        tmp_path,
        """
        from llmbrick import Pipeline
        from llmbrick.bricks import EchoLLM

        def __getattr__(name):
            if name == "pipeline":
                return Pipeline(description="built when asked").add_brick(EchoLLM())
            raise AttributeError(name)
        """,
    )
    served = load_target(target)
    assert isinstance(served, Pipeline) and served.description == "built when asked"


def test_a_module_with_nothing_to_serve_says_so(tmp_path: Path) -> None:
    target = app(tmp_path, "from llmbrick import Pipeline\nanswer = 42\n")
    with pytest.raises(TargetError, match="defines nothing to serve: no Pipeline, Brick"):
        load_target(target)
