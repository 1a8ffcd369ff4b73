"""Run the ``llmbrick`` command as a user does: a real process, real ports, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from tests.support import TIMEOUT

__all__ = ["COMMAND", "ROOT", "Served", "closed_port", "gateway", "run"]

ROOT = Path(__file__).resolve().parents[2]
#: The command under test; the install tests pass a fresh virtualenv's instead.
COMMAND = (sys.executable, "-m", "llmbrick_gateway")


class Served:
    """A gateway subprocess and the endpoint URLs it printed (``SSE``, ``gRPC``, ...)."""

    def __init__(self, process: asyncio.subprocess.Process, urls: dict[str, str]) -> None:
        self.process = process
        self.urls = urls

    @property
    def http(self) -> str:
        """``http://host:port`` of the SSE and WebSocket port."""
        return self.urls["health"].removesuffix("/healthz")

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC port."""
        return self.urls["gRPC"].removeprefix("grpc://")

    async def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the gateway wrote to stderr."""
        self.process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(self.process.communicate(), TIMEOUT)
        return self.process.returncode or 0, stderr.decode()


@asynccontextmanager
async def gateway(
    *args: str,
    env: dict[str, str] | None = None,
    command: Sequence[str] = COMMAND,
    cwd: Path = ROOT,
    base_env: Mapping[str, str] = os.environ,
) -> AsyncIterator[Served]:
    """``llmbrick serve *args`` on free ports, yielded once it printed its endpoints.

    The environment is ``base_env`` updated with ``env``.
    """
    process = await asyncio.create_subprocess_exec(
        *command,
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base_env, "LLMBRICK_HTTP_PORT": "0", "LLMBRICK_GRPC_PORT": "0", **(env or {})},
        cwd=cwd,
    )
    assert process.stdout is not None and process.stderr is not None
    urls: dict[str, str] = {}
    try:
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
            if not line:
                error = await asyncio.wait_for(process.stderr.read(), TIMEOUT)
                raise AssertionError(f"the gateway exited before it was ready: {error.decode()}")
            if line.startswith("Press Ctrl+C"):
                break
            parts = line.split()
            if len(parts) == 2:
                urls[parts[0]] = parts[1]
        yield Served(process, urls)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(
    *args: str,
    command: Sequence[str] = COMMAND,
    cwd: Path = ROOT,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    base_env: Mapping[str, str] = os.environ,
) -> tuple[int, str, str]:
    """Run ``llmbrick *args`` to its end: exit code, stdout, stderr (``env`` as for gateway)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**base_env, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), TIMEOUT)
    return process.returncode or 0, out.decode(), err.decode()


def closed_port() -> socket.socket:
    """A socket holding a port on 127.0.0.1 without listening: connecting is refused.

    Keep it open while the port is in use, so no other process can take the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock
