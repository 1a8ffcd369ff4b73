"""The deployment files in deploy/, checked as far as this machine can.

There is no Docker engine and no cluster here, so nothing is built or applied. Instead:
the Kubernetes manifests are validated against the API's JSON schemas (bundled with
kubernetes-validate, so this works offline), strictly, so a misspelt field fails; the
Dockerfile is parsed and its instructions checked; every command line they run is checked
against ``llmbrick serve --help``; and a real gateway, configured from the ConfigMap and
the Deployment's arguments, is probed the way the kubelet and Docker's HEALTHCHECK would,
before and during its drain, so the probes mean what the manifests assume.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from contextlib import aclosing
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from llmbrick_gateway import connect
from tests.components import ROOT, wait_for
from tests.deploy.support import APP, SERVE, gateway
from tests.support import TIMEOUT

DEPLOY = ROOT / "deploy"
#: The oldest Kubernetes the manifests claim (gRPC probes are GA since 1.27) and the
#: newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())


@functools.cache
def serve_help() -> str:
    result = subprocess.run(
        [*SERVE, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT, check=True
    )
    return result.stdout


def cli_flags() -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", serve_help()))


def cli_accepts(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Parse ``args`` with the real CLI without serving: argparse converts and checks each
    option's value in order and stops at the trailing ``--help`` with exit code 0, so a bad
    value before it exits 2 instead. (An unknown flag does not: argparse reports those only
    at the end, which ``--help`` never reaches; :func:`cli_flags` covers them.)"""
    return subprocess.run(
        [*SERVE, *args, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT
    )


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s, by kind (each kind occurs once)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"a second {document['kind']} in {path}"
            found[document["kind"]] = document
    return found


def container() -> dict[str, Any]:
    (only,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    instructions = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    last_from = max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM")
    return instructions[last_from:]


def instruction(stage: list[dict[str, Any]], name: str) -> str:
    (value,) = [i["value"] for i in stage if i["instruction"] == name]
    text: str = value
    return text


# --- Kubernetes ----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifests_match_the_kubernetes_schemas(version: str) -> None:
    found = manifests()
    assert set(found) == {"ConfigMap", "Deployment", "Service"}
    for document in found.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(manifests()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_the_deployment_probes_drains_and_runs_unprivileged() -> None:
    found = manifests()
    pod = found["Deployment"]["spec"]["template"]
    gateway_container = container()
    ports = {p["name"]: p["containerPort"] for p in gateway_container["ports"]}
    assert ports == {"http": 8000, "grpc": 50051}

    # The Service reaches these pods on these ports.
    service = found["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {
        "http": "http",
        "grpc": "grpc",
    }

    assert gateway_container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway_container["livenessProbe"]["httpGet"]["path"] == "/flows"
    assert gateway_container["startupProbe"]["grpc"] == {"port": ports["grpc"]}

    # The pod gets to finish: preStop sleep, then the whole drain, then a margin for the
    # gateway's last flush (2 s) and gRPC stop (1 s), all before the SIGKILL.
    pre_stop = gateway_container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(found["ConfigMap"]["data"]["LLMBRICK_DRAIN_TIMEOUT"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain + 3

    security = gateway_container["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The pod's user is the image's user.
    user, group = instruction(final_stage(dockerfile()), "USER").split(":")
    pod_security = pod["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(user), int(group))

    resources = gateway_container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_the_deployment_runs_a_command_line_and_settings_the_cli_accepts() -> None:
    args = container()["args"]
    assert {a for a in args if a.startswith("--")} <= cli_flags()
    assert args[args.index("--host") + 1] == "0.0.0.0"  # reachable from outside the pod
    assert args[args.index("--http-port") + 1] == "8000"
    assert args[args.index("--grpc-port") + 1] == "50051"
    parsed = cli_accepts(args)
    assert parsed.returncode == 0, parsed.stderr

    configmap = manifests()["ConfigMap"]["data"]
    assert container()["envFrom"] == [{"configMapRef": {"name": "llmbrick-env"}}]
    assert manifests()["ConfigMap"]["metadata"]["name"] == "llmbrick-env"
    documented = set(re.findall(r"LLMBRICK_[A-Z_]+", serve_help()))
    assert set(configmap) <= documented, set(configmap) - documented


# --- Dockerfile ----------------------------------------------------------------------


def test_the_dockerfile_has_the_instructions_a_safe_image_needs() -> None:
    parser = dockerfile()
    stage = final_stage(parser)
    assert re.fullmatch(r"python:3\.1\d-slim", parser.baseimage)
    user = instruction(stage, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "a numeric non-root user and group"
    assert set(instruction(stage, "EXPOSE").split()) == {"8000", "50051"}
    assert instruction(stage, "STOPSIGNAL") == "SIGTERM"  # what starts the gateway's drain
    healthcheck = instruction(stage, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    assert re.search(r"--timeout=\d+s", healthcheck)


def test_the_image_runs_llmbrick_serve_with_flags_the_cli_accepts() -> None:
    stage = final_stage(dockerfile())
    # Exec form (JSON arrays): the gateway is PID 1 and receives SIGTERM itself.
    entrypoint = json.loads(instruction(stage, "ENTRYPOINT"))
    cmd = json.loads(instruction(stage, "CMD"))
    assert entrypoint == ["llmbrick", "serve"]
    assert {a for a in cmd if a.startswith("--")} <= cli_flags()
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    parsed = cli_accepts(cmd)
    assert parsed.returncode == 0, parsed.stderr
    # The Deployment spells out the same command line.
    assert container()["args"] == cmd


def test_the_build_stage_copies_everything_the_wheel_is_made_of() -> None:
    parser = dockerfile()
    instructions = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    build = instructions[: max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM")]
    copied = set()
    for step in build:
        if step["instruction"] == "COPY":
            *sources, _ = shlex.split(step["value"])
            copied.update(sources)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    top_level = {package.split("/")[0] for package in wheel}
    needed = {"pyproject.toml", project["project"]["readme"], *top_level}
    assert needed <= copied, needed - copied
    assert all((ROOT / source).exists() for source in copied)
    # The build context is the repository root; its ignore file must let these through
    # (and keep .venv, node_modules and the rest out of the upload).
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert {f"!{source}" for source in copied} <= set(ignore)


# --- the probes against a real gateway -----------------------------------------------


async def _grpc_health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        # service "" is what the kubelet's gRPC probe asks about by default.
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        status: int = answer.status
        return status


async def _docker_healthcheck(http_port: int) -> int:
    """Docker's HEALTHCHECK command from the Dockerfile, pointed at the test's port."""
    found = re.search(r"CMD (\[.*\])", instruction(final_stage(dockerfile()), "HEALTHCHECK"))
    assert found is not None, "HEALTHCHECK in exec form"
    program, *args = (
        arg.replace("127.0.0.1:8000", f"127.0.0.1:{http_port}") for arg in json.loads(found[1])
    )
    assert program == "python"  # the image's; here the test's own interpreter
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), TIMEOUT)


async def _first_then_rest(url: str, gate: Path, first: asyncio.Event) -> list[Any]:
    events = []
    request = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"gate": str(gate)}}
    async with connect(url) as client, aclosing(client.stream("gated", request)) as stream:
        async for event in stream:
            events.append(event)
            first.set()
    return events


async def test_the_probes_answer_as_the_manifests_assume_before_and_during_the_drain(
    tmp_path: Path,
) -> None:
    # The ConfigMap's settings and the Deployment's command line, but on loopback and
    # free ports; the app is the test app, whose "gated" flow ends when the test says.
    args = container()["args"]
    local = {"--host": "127.0.0.1", "--http-port": "0", "--grpc-port": "0"}
    command = [local.get(prev, arg) for prev, arg in zip(["", *args[:-1]], args, strict=True)]
    env = {**manifests()["ConfigMap"]["data"], "LLMBRICK_TARGET": f"{APP}:registry"}
    gate = tmp_path / "gate"
    async with (
        gateway(*SERVE, *command, log=tmp_path / "gateway.log", env=env) as served,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.http_port}", timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200  # readiness
        assert (await http.get("/flows")).status_code == 200  # liveness
        assert await _grpc_health(served.grpc_port) == health_pb2.HealthCheckResponse.SERVING
        assert await _docker_healthcheck(served.http_port) == 0

        first = asyncio.Event()
        stream = asyncio.create_task(_first_then_rest(served.urls["SSE"], gate, first))
        await asyncio.wait_for(first.wait(), TIMEOUT)
        served.process.send_signal(signal.SIGTERM)  # as the kubelet, after preStop

        async def draining() -> bool:
            return (await http.get("/healthz")).status_code == 503

        await wait_for(draining, "/healthz to turn 503")
        assert (await http.get("/flows")).status_code == 200  # not restarted while draining
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

        async def grpc_draining() -> bool:
            return await _grpc_health(served.grpc_port) == not_serving

        await wait_for(grpc_draining, "gRPC health to turn NOT_SERVING")
        assert await _docker_healthcheck(served.http_port) != 0

        gate.touch()  # the running stream finishes within the drain
        events = await asyncio.wait_for(stream, TIMEOUT)
        assert await asyncio.wait_for(served.process.wait(), TIMEOUT) == 0
    assert events[-1]["type"] == "done"


# --- nginx ---------------------------------------------------------------------------


def test_the_shipped_nginx_config_keeps_the_ordinary_settings() -> None:
    text = (DEPLOY / "nginx" / "llmbrick.conf").read_text()
    for line in (
        "proxy_buffering on;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout 60s;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $llmbrick_connection;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Request-Id $llmbrick_request_id;",
        "listen 8081 http2;",
        "grpc_pass grpc://llmbrick_grpc;",
    ):
        assert line in text, line
