"""``llmbrick serve``'s telemetry options: /metrics, a metrics port, JSON log lines."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmbrick_grpc import GrpcClient
from tests.gateway.cli_support import gateway
from tests.support import TIMEOUT

HELLO = {"messages": [{"role": "user", "content": "hello there"}]}


def banner_url(banner: list[str], label: str) -> str:
    for line in banner:
        parts = line.split()
        if parts and parts[0] == label:
            return parts[1]
    raise AssertionError(f"no {label} line in {banner}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_on_the_http_port_count_streams_per_transport() -> None:
    async with gateway("--log-format", "json") as served:
        metrics_url = banner_url(served.banner, "metrics")
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.post(
                served.urls["SSE"], json=HELLO, headers={"x-request-id": "json-line-1"}
            )
            assert response.status_code == 200
            text = (await client.get(metrics_url)).text
        line = await served.logged(r'\{.*"outcome".*json-line-1.*\}|\{.*json-line-1.*"outcome".*\}')
        record = json.loads(line.group(0))
        assert record["request_id"] == "json-line-1" and record["outcome"] == "ok"
        assert "hello there" not in served.stderr.text
    total = samples(text)
    key = ("llmbrick_streams_total", (("flow", "default"), ("outcome", "ok"), ("transport", "sse")))
    assert total[key] == 1.0


async def test_a_grpc_only_gateway_serves_metrics_on_its_own_port() -> None:
    async with gateway("--transports", "grpc", "--metrics-port", "0") as served:
        metrics_url = banner_url(served.banner, "metrics")
        async with GrpcClient(served.grpc_address) as client:
            result = await client.invoke("default", HELLO)
            assert result["error"] is None
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            text = (await http.get(metrics_url)).text
    key = (
        "llmbrick_streams_total",
        (("flow", "default"), ("outcome", "ok"), ("transport", "grpc")),
    )
    assert samples(text)[key] == 1.0


async def test_metrics_can_be_turned_off() -> None:
    async with gateway("--no-metrics") as served:
        assert not any(line.split()[:1] == ["metrics"] for line in served.banner)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            assert (await client.get(served.http + "/metrics")).status_code == 404
