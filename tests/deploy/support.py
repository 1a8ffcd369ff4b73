"""A gateway as its own process, as the deployment tests put it behind nginx or a probe."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.components import ROOT
from tests.support import TIMEOUT

APP = ROOT / "tests" / "deploy" / "app.py"
#: ``llmbrick serve`` as a user runs it (``python -m llmbrick_gateway`` is the same command).
SERVE = [sys.executable, "-m", "llmbrick_gateway", "serve"]


@dataclass
class GatewayProcess:
    """A running gateway: the endpoints it printed, its ports, and its log file."""

    process: asyncio.subprocess.Process
    urls: dict[str, str]
    http_port: int
    grpc_port: int
    log: Path

    async def stop(self) -> int:
        """SIGTERM (the gateway drains) and wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), TIMEOUT)


@asynccontextmanager
async def gateway(
    *command: str, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """Run a gateway command (on free ports unless ``env`` or flags say otherwise);
    yields once it printed its endpoints, and stops it afterwards.

    stderr (the per-stream log lines) goes to ``log`` rather than to a pipe nobody reads,
    which would fill up and stall the gateway during a module's worth of tests.
    """
    settings = {**os.environ, "LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0", **(env or {})}
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=settings, cwd=ROOT
        )
    assert process.stdout is not None
    try:
        urls: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
            assert line, f"the gateway exited before it was ready:\n{_read(log)}"
            if line.startswith("Press Ctrl+C"):
                break
            parts = line.split()
            if len(parts) == 2:
                urls[parts[0]] = parts[1]
        http = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/chat/completions", urls["SSE"])
        grpc = re.fullmatch(r"grpc://127\.0\.0\.1:(\d+)", urls["gRPC"])
        assert http and grpc, urls
        yield GatewayProcess(process, urls, int(http[1]), int(grpc[1]), log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")
