"""The redis-server the ``*-redis`` servers keep their streams in, for one benchmark run.

``run.py`` starts one before the first ``*-redis`` server and stops it at the end of
the run. It listens on a free 127.0.0.1 port with a temporary directory and persists
nothing (no snapshots, no append-only file), as the tests' redis-server does
(``tests/components.py``, whose ``binary`` and ``free_port`` are used here; the
tests' ``RedisServer`` is asyncio-based and could not be pinned). It is pinned to the
servers' CPU in the child before it executes, so it competes with the server it
serves, not with the load client; it is emptied (``FLUSHALL``) before every server
starts, so each run begins with an empty database. Its CPU time is read apart from the
server's (the server's figure is its own process tree; redis is not in it).

Kept free of asyncio: ``run.py`` is synchronous.
"""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from benchmarks.common import prepare_process
from tests.components import binary, free_port

__all__ = ["RedisProcess"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def _command(*words: str) -> bytes:
    """One command in RESP, as redis-cli sends it."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisProcess:
    """A redis-server process on 127.0.0.1, pinned to ``cpus``.

    Raises (from :meth:`start`):
        RuntimeError: redis-server is not installed (one line saying how to get it), or
            it did not answer ``PING`` in time.
    """

    def __init__(self, cpus: Collection[int]) -> None:
        self.cpus = frozenset(cpus)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, for ``RedisStore.from_url``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id (its CPU time is read from ``/proc``)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the server and return once it answers ``PING``."""
        path = binary("redis-server")
        self._dir = tempfile.TemporaryDirectory(prefix="llmbrick-bench-redis-")
        directory = Path(self._dir.name)
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *(path, "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", str(directory), "--save", "", "--appendonly", "no"),
                *("--daemonize", "no", "--logfile", str(directory / "redis.log")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=functools.partial(prepare_process, set(self.cpus)),
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while self.call("PING") != b"+PONG\r\n":
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = directory / "redis.log"
                tail = (
                    log.read_text(errors="replace").strip().splitlines()[-1:]
                    if log.exists()
                    else []
                )
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer PING: {' '.join(tail) or 'no log'}"
                )
            time.sleep(0.05)
        info = self.call("INFO", "server").decode(errors="replace")
        self.version = next(
            (
                line.split(":", 1)[1].strip()
                for line in info.splitlines()
                if line.startswith("redis_version:")
            ),
            "",
        )

    def call(self, *words: str) -> bytes:
        """Send one command on a new connection and return the raw answer (b"" if none)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock:
                sock.sendall(_command(*words))
                answer = sock.recv(65536)
                if answer.startswith(b"$"):  # a bulk string: read it whole
                    size = int(answer[1 : answer.index(b"\r\n")])
                    while len(answer) < answer.index(b"\r\n") + 2 + size + 2:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                return answer
        except OSError:
            return b""

    def flush(self) -> None:
        """Empty every database (before a server starts)."""
        answer = self.call("FLUSHALL")
        if answer != b"+OK\r\n":
            raise RuntimeError(f"redis-server FLUSHALL answered {answer[:80]!r}")

    def stop(self) -> None:
        """SIGTERM, wait (kill after a while), remove the directory; safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
