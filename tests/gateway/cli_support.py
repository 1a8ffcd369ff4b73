"""Run the ``llmbrick`` command as a user does: a real process, real ports, real signals."""

from __future__ import annotations

import asyncio
import os
import re
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


class _Lines:
    """Every line a stream gives, read as it comes, so a test can wait for one.

    Reading all the time also keeps the pipe from filling up and stalling the
    gateway when it logs a lot.
    """

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def match(
        self, pattern: str, after: int = 0, *, seconds: float = TIMEOUT
    ) -> re.Match[str]:
        """The first line from index ``after`` on matching ``pattern``, waiting for it."""

        def found() -> re.Match[str] | None:
            for line in self.lines[after:]:
                matched = re.search(pattern, line)
                if matched is not None:
                    return matched
            return None

        async with asyncio.timeout(seconds), self._changed:
            while (matched := found()) is None:
                if self._task.done():
                    raise AssertionError(f"no line matched {pattern!r}:\n{self.text}")
                await self._changed.wait()
            return matched

    async def finish(self) -> str:
        await asyncio.wait_for(self._task, TIMEOUT)
        return self.text


class Served:
    """A gateway subprocess, the URLs it printed (``SSE``, ``gRPC``, ...), and its stderr."""

    def __init__(
        self, process: asyncio.subprocess.Process, urls: dict[str, str], banner: list[str]
    ) -> None:
        assert process.stderr is not None
        self.process = process
        self.urls = urls
        #: Every line printed before the gateway said it was ready.
        self.banner = banner
        self.stderr = _Lines(process.stderr)

    @property
    def http(self) -> str:
        """``http://host:port`` (or ``https://``) of the SSE and WebSocket port."""
        return self.urls["health"].removesuffix("/healthz")

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC port."""
        return self.urls["gRPC"].split("://", 1)[1]

    async def logged(self, pattern: str, after: int = 0) -> re.Match[str]:
        """Wait until the gateway logs a line matching ``pattern`` (bounded by TIMEOUT)."""
        return await self.stderr.match(pattern, after)

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``, then the exit code and everything the gateway wrote to stderr."""
        self.process.send_signal(sig)
        return await self.wait()

    async def wait(self) -> tuple[int, str]:
        """Wait for the exit: the exit code and everything written to stderr."""
        await asyncio.wait_for(self.process.wait(), TIMEOUT)
        return self.process.returncode or 0, await self.stderr.finish()


@asynccontextmanager
async def gateway(
    *args: str,
    env: dict[str, str] | None = None,
    command: Sequence[str] = COMMAND,
    cwd: Path = ROOT,
    base_env: Mapping[str, str] = os.environ,
    start_timeout: float = TIMEOUT,
) -> AsyncIterator[Served]:
    """``llmbrick serve *args`` on free ports, yielded once it printed its endpoints.

    The environment is ``base_env`` updated with ``env``. ``start_timeout`` bounds
    the wait for the endpoints (workers start one interpreter after another).
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
    banner: list[str] = []
    served: Served | None = None
    try:
        async with asyncio.timeout(start_timeout):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    error = await asyncio.wait_for(process.stderr.read(), TIMEOUT)
                    raise AssertionError(
                        f"the gateway exited before it was ready: {error.decode()}"
                    )
                banner.append(line.rstrip("\n"))
                if line.startswith("Press Ctrl+C"):
                    break
                parts = line.split()
                if len(parts) == 2:
                    urls[parts[0]] = parts[1]
        served = Served(process, urls, banner)
        yield served
    finally:
        if process.returncode is None:
            # With workers, the supervisor's SIGKILL would leave them running: let it stop them.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        # Read both pipes to their end, so that no transport is left open.
        await asyncio.wait_for(process.stdout.read(), TIMEOUT)
        if served is not None:
            await served.stderr.finish()
        else:
            await asyncio.wait_for(process.stderr.read(), TIMEOUT)


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
