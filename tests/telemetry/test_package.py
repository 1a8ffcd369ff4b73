"""The package: which extra each part needs, and ``install`` for the gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from llmbrick import FlowRegistry, FlowRuntime
from llmbrick_telemetry import PrometheusObserver, Telemetry, TracingObserver, install
from tests.support import TIMEOUT
from tests.telemetry.support import chat, parse_metrics, texts, value

ROOT = Path(__file__).resolve().parents[2]

# Runs with one library blocked, as if its extra were not installed.
_WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import llmbrick_telemetry
from llmbrick import FlowRuntime
print(type(llmbrick_telemetry.JsonFormatter()).__name__)
runtime = FlowRuntime()
try:
    {statement}
except ImportError as exc:
    print("ImportError:", exc)
print("observers:", len(runtime.observers))
"""


def without(blocked: list[str], statement: str) -> str:
    script = _WITHOUT.format(blocked=blocked, statement=statement)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=True,
    )
    return done.stdout


def test_each_part_names_the_extra_it_misses_and_the_rest_still_imports() -> None:
    out = without(["prometheus_client"], "from llmbrick_telemetry import PrometheusObserver")
    assert out.splitlines() == [
        "JsonFormatter",
        "ImportError: llmbrick_telemetry's metrics needs the 'metrics' extra "
        "(prometheus_client is missing): pip install '.[metrics]' from a checkout of llmbrick, "
        "or pip install 'llmbrick[metrics] @ <wheel or git URL>'",
        "observers: 0",
    ]
    out = without(["opentelemetry"], "llmbrick_telemetry.TracingObserver")
    assert "needs the 'otel' extra (opentelemetry is missing)" in out
    # install() imports what it needs first, so a missing extra leaves the runtime untouched.
    out = without(["opentelemetry"], "llmbrick_telemetry.install(runtime, tracing=True)")
    assert "needs the 'otel' extra" in out and out.endswith("observers: 0\n")
    out = without(["prometheus_client", "opentelemetry"], "pass")
    assert out.splitlines() == ["JsonFormatter", "observers: 0"]


async def test_install_adds_the_observers_and_serves_their_registry() -> None:
    registry = FlowRegistry()
    registry.register("texts", texts)
    runtime = FlowRuntime(registry)
    provider = TracerProvider()
    own = CollectorRegistry()
    telemetry = install(runtime, tracing=True, registry=own, tracer_provider=provider)
    assert isinstance(telemetry.metrics, PrometheusObserver)
    assert isinstance(telemetry.tracing, TracingObserver)
    assert runtime.observers == (telemetry.metrics, telemetry.tracing)
    assert telemetry.registry is own
    assert [route.path for route in telemetry.router("/stats").routes] == ["/stats"]
    [e async for e in runtime.run("texts", chat("texts"))]
    async with await telemetry.serve("127.0.0.1", 0) as server:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            samples = parse_metrics((await client.get(server.url)).text)
    labels = {"transport": "python", "flow": "texts"}
    assert value(samples, "llmbrick_streams_total", **labels, outcome="ok") == 1
    provider.shutdown()

    bare = install(FlowRuntime(), metrics=False)
    assert bare == Telemetry(bare.runtime) and bare.runtime.observers == ()
    with pytest.raises(RuntimeError, match=r"install\(runtime, metrics=True\)"):
        bare.registry  # noqa: B018 - the property raises
