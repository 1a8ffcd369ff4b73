"""Real components for tests: redis-server, nginx and Node.js scripts.

Each server runs as its own process on a free 127.0.0.1 port, with a private temporary
directory for its data, logs and pid file, and is stopped when the ``async with`` block
ends. Readiness is a condition polled up to a deadline (the port accepts, Redis answers
PING), never a fixed sleep. The binaries come from Debian's packages and the Node
packages from ``tests/node``; ``scripts/_components.sh`` (run by ``./scripts/test``)
installs whatever is missing, so a missing component fails loudly instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
NODE_PACKAGES = ROOT / "tests" / "node"
_INSTALL_HINT = "scripts/_components.sh installs it (./scripts/test runs it first)"


def binary(name: str) -> str:
    """The path of an installed program; sbin directories count even when PATH lacks them."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} is not installed; {_INSTALL_HINT}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    For programs that take a port number rather than a socket (redis-server, nginx): the
    kernel picks it, so two concurrent test runs do not collide the way fixed ports would.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` succeeds now."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    *,
    process: asyncio.subprocess.Process | None = None,
    log: Path | None = None,
    seconds: float = TIMEOUT,
) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds`` or when ``process`` exits.

    The failure names ``what`` and includes the tail of ``log`` (a server's own account of
    why it did not come up, such as an nginx config error).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        exited = process is not None and process.returncode is not None
        if exited or loop.time() > deadline:
            reason = f"exited with {process.returncode}" if exited and process else "timed out"
            raise RuntimeError(f"waiting for {what}: {reason}\n{_tail(log)}")
        # A short pause between attempts keeps the poll from spinning a shared core.
        await asyncio.sleep(0.02)


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def _terminate(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    """Signal ``process`` and wait for it; kill it if it does not exit within the deadline."""
    if process.returncode is not None:
        return
    with suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        await asyncio.wait_for(process.wait(), TIMEOUT)
    except TimeoutError:
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise


# --- Redis ------------------------------------------------------------------------------


class RedisServer:
    """A redis-server process bound to 127.0.0.1 with its own data directory.

    ``stop()`` and ``start()`` may be called any number of times in between: the server
    comes back on the same port with the same ``--dir``, as after a real restart (clients
    see their connections drop and must reconnect). Nothing is persisted: snapshots and the
    append-only file are off, so a restarted server is empty.
    """

    def __init__(self, directory: Path, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.dir = directory
        self.log = directory / "redis.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, as redis-py's ``from_url`` takes it."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the server (again) and return once it answers PING."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        self.process = await asyncio.create_subprocess_exec(
            binary("redis-server"),
            "--bind",
            self.host,  # Redis 7 listens on every interface unless told otherwise.
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(self.ping, "redis-server", process=self.process, log=self.log)

    async def stop(self) -> None:
        """Shut the server down (SIGTERM, as a service manager does) and wait until it exits."""
        if self.process is not None:
            await _terminate(self.process)

    async def kill(self) -> None:
        """End the server abruptly (SIGKILL), as a crash or an OOM kill would."""
        if self.process is not None:
            await _terminate(self.process, signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def ping(self) -> bool:
        """Whether the server answers ``PING`` with ``PONG`` now (``LOADING`` counts as no)."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), TIMEOUT)
            return answer == b"+PONG\r\n"
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A running :class:`RedisServer` on a free port; stopped and its directory removed after."""
    with tempfile.TemporaryDirectory(prefix="llmbrick-redis-") as tmp:
        server = RedisServer(Path(tmp), free_port())
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


# --- nginx ------------------------------------------------------------------------------

_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
{user}
events {{
    worker_connections 256;
}}

http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;

{http}
}}
"""


@dataclass
class Nginx:
    """A running nginx: its prefix directory, config, logs and the ports it listens on."""

    prefix: Path
    config: Path
    ports: tuple[int, ...]
    process: asyncio.subprocess.Process

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    def errors(self) -> str:
        """The error log so far (nginx writes it as things happen, so a test can read it)."""
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""


@asynccontextmanager
async def nginx(http_config: str, *, ports: Iterable[int]) -> AsyncIterator[Nginx]:
    """Run nginx with ``http_config`` as the body of its ``http {}`` block.

    ``http_config`` holds the ``upstream``, ``map`` and ``server`` blocks (what a user puts
    in ``/etc/nginx/conf.d/``); its ``listen`` directives must name 127.0.0.1 and the
    ``ports`` given here, which are awaited until they accept connections. Everything
    nginx writes (pid, logs, temp files) stays in a private prefix directory, so this
    never touches /etc/nginx, /var/log/nginx or a system nginx.
    """
    wanted = tuple(ports)
    with tempfile.TemporaryDirectory(prefix="llmbrick-nginx-") as tmp:
        prefix = Path(tmp)
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir()
        # As root, nginx would run its workers as "nobody", who cannot enter this private
        # directory to write temp files; the workers keep the test's own user instead.
        user = "user root;" if os.geteuid() == 0 else ""
        config = prefix / "nginx.conf"
        config.write_text(
            _NGINX_MAIN.format(
                prefix=prefix, user=user, http=textwrap.indent(http_config.strip("\n"), "    ")
            )
        )
        process = await asyncio.create_subprocess_exec(
            binary("nginx"),
            "-p",
            f"{prefix}/",
            "-c",
            str(config),
            "-e",  # the log for messages before the config is read (else /var/log/nginx)
            str(prefix / "logs" / "error.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        server = Nginx(prefix, config, wanted, process)
        try:
            for port in wanted:

                async def accepts(port: int = port) -> bool:
                    return await port_accepts(port)

                await wait_for(
                    accepts, f"nginx on port {port}", process=process, log=server.error_log
                )
            yield server
        finally:
            # SIGTERM is nginx's fast shutdown: open streams are closed rather than awaited.
            await _terminate(process)


# --- Node.js ----------------------------------------------------------------------------


@dataclass
class NodeResult:
    returncode: int
    stdout: str
    stderr: str


async def node(
    script: str | Path,
    args: Sequence[str] = (),
    *,
    options: Sequence[str] = (),
    seconds: float = TIMEOUT,
) -> NodeResult:
    """Run a Node.js ES module and return its exit code and output.

    ``script`` is a path to a ``.mjs``/``.js`` file or the module's source text. Source
    text runs from a temporary directory whose ``node_modules`` links to
    ``tests/node/node_modules``, so ``import OpenAI from "openai"`` resolves there (ES
    modules ignore NODE_PATH). ``options`` go to node itself (``--experimental-websocket``);
    a script still running after ``seconds`` is killed and the call raises ``TimeoutError``.
    """
    modules = NODE_PACKAGES / "node_modules"
    if not modules.is_dir():
        raise RuntimeError(f"{modules} is missing; {_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="llmbrick-node-") as tmp:
        if isinstance(script, Path):
            path = script
        else:
            path = Path(tmp) / "script.mjs"
            path.write_text(script)
            (Path(tmp) / "node_modules").symlink_to(modules, target_is_directory=True)
        process = await asyncio.create_subprocess_exec(
            binary("node"),
            *options,
            str(path),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), seconds)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return NodeResult(process.returncode or 0, out.decode(), err.decode())
