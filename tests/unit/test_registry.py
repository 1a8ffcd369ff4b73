"""FlowRegistry: registration rules, lookup, descriptions and as_runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmbrick import (
    ChatRequest,
    DuplicateFlow,
    Event,
    FlowNotFound,
    FlowRegistry,
    FlowRuntime,
    Pipeline,
)
from llmbrick.bricks import EchoLLM
from llmbrick.serving import as_runtime


async def hello(request: ChatRequest) -> AsyncIterator[Event]:
    """Says hello.

    More text that is not part of the description.
    """
    yield {"type": "text", "text": "hello"}


def test_register_and_get() -> None:
    registry = FlowRegistry()
    spec = registry.register("hello", hello)
    assert registry.get("hello") is spec
    assert spec.request_model is ChatRequest
    assert spec.description == "Says hello."
    assert "hello" in registry and len(registry) == 1
    assert registry.names() == ["hello"]
    assert [s.name for s in registry] == ["hello"]


def test_decorator_defaults_to_the_function_name() -> None:
    registry = FlowRegistry()

    @registry.flow(description="custom")
    async def greet(request: ChatRequest) -> AsyncIterator[Event]:
        yield {"type": "text", "text": "hi"}

    assert registry.get("greet").description == "custom"


def test_duplicate_names_fail_at_registration() -> None:
    registry = FlowRegistry()
    registry.register("hello", hello)
    with pytest.raises(DuplicateFlow, match="already registered"):
        registry.register("hello", hello)
    with pytest.raises(ValueError):
        registry.register("hello", hello)


@pytest.mark.parametrize("name", ["", "has space", "x" * 200, 3])
def test_malformed_names_are_rejected(name: object) -> None:
    with pytest.raises(TypeError, match="flow name"):
        FlowRegistry().register(name, hello)  # type: ignore[arg-type]


def test_non_flows_are_rejected_at_registration() -> None:
    async def coroutine(request: ChatRequest) -> None:
        return None

    def plain(request: ChatRequest) -> None:
        return None

    for bad in (coroutine, plain, "text", 3):
        with pytest.raises(TypeError, match="async generator function"):
            FlowRegistry().register("bad", bad)


def test_request_model_must_be_a_pydantic_model() -> None:
    with pytest.raises(TypeError, match="pydantic"):
        FlowRegistry().register("x", hello, request_model=dict)  # type: ignore[arg-type]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        FlowRegistry().register("x", hello, timeout=0)


def test_callable_objects_with_an_async_generator_call_are_flows() -> None:
    class Flow:
        async def __call__(self, request: ChatRequest) -> AsyncIterator[Event]:
            yield {"type": "text", "text": "x"}

    assert FlowRegistry().register("obj", Flow()).name == "obj"


def test_pipelines_and_bricks_are_flows() -> None:
    registry = FlowRegistry()
    pipeline = Pipeline(description="echoes").add_brick(EchoLLM())
    assert registry.register("p", pipeline).description == "echoes"
    spec = registry.register("b", EchoLLM())
    assert isinstance(spec.handler, Pipeline)


def test_unknown_flow_lists_known_ones() -> None:
    registry = FlowRegistry()
    with pytest.raises(FlowNotFound, match="known flows: none"):
        registry.get("x")
    with pytest.raises(FlowNotFound):
        registry.get(["unhashable"])  # type: ignore[arg-type]


def test_describe_includes_the_camel_case_schema() -> None:
    registry = FlowRegistry()
    registry.register("hello", hello)
    [entry] = registry.describe()
    assert entry["name"] == "hello"
    properties = entry["requestSchema"]["properties"]
    assert "maxTokens" in properties and "sessionId" in properties


def test_as_runtime_shares_registries_and_runtimes() -> None:
    runtime = FlowRuntime()
    assert as_runtime(runtime) is runtime
    registry = FlowRegistry()
    assert as_runtime(registry).registry is registry
    assert as_runtime(None).registry.names() == []
    assert as_runtime(hello).registry.names() == ["default"]
    assert as_runtime(EchoLLM(), name="echo").registry.names() == ["echo"]
    with pytest.raises(TypeError, match="a server needs"):
        as_runtime(42)


async def _one(request: Any) -> Any:
    yield {"type": "text", "text": "x"}


def test_aliases_reach_the_flow_and_are_unique() -> None:
    registry = FlowRegistry()
    spec = registry.register("chat", _one, aliases=["gpt-4o-mini", "fast"], capabilities=["images"])
    assert registry.get("gpt-4o-mini") is spec and registry.get("fast") is spec
    assert spec.capabilities == frozenset({"images"})
    assert registry.names() == ["chat"]
    with pytest.raises(DuplicateFlow, match="'fast'"):
        registry.register("other", _one, aliases=["fast"])
    with pytest.raises(DuplicateFlow, match="'chat'"):
        registry.register("x", _one, aliases=["chat"])
    with pytest.raises(TypeError, match="not one string"):
        registry.register("y", _one, aliases="fast")
    with pytest.raises(TypeError, match="must be 1-128"):
        registry.register("z", _one, aliases=["bad name"])
    assert "other" not in registry and "x" not in registry


def test_servers_handed_one_registry_share_one_runtime() -> None:
    registry = FlowRegistry()
    registry.register("x", _one)
    first = as_runtime(registry)
    assert as_runtime(registry) is first
    assert as_runtime(first) is first
    assert as_runtime(FlowRegistry()) is not first
