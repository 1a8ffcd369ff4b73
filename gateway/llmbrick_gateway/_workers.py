"""``llmbrick serve --workers N``: N gateway processes sharing the HTTP and gRPC ports.

One event loop uses one core; to use more, the supervisor (the process the
user started) runs N workers, each a whole gateway with its own runtime, and
does nothing else: it starts them, restarts one that dies (after a back-off
doubling with each quick death, logged), forwards SIGTERM and SIGINT so that
every worker drains, and exits 0 once they all have. Limits that count
(``max_streams``, per-key streams and rate, ``max_connections``) are per worker.

How the ports are shared, and why each way:

- **HTTP: one listening socket, inherited.** The supervisor binds the port once
  and every worker serves the same socket (passed to ``uvicorn`` as
  ``sockets=``). There is one accept queue: a worker that is busy or stuck does
  not accept, so the others take the new connections, and a worker that dies
  loses only the connections it had accepted, never ones still queued. A taken
  port fails once, in the supervisor, and port 0 works as without workers.
- **gRPC: SO_REUSEPORT.** grpcio binds its ports itself and cannot be handed a
  listening socket, so each worker's gRPC server binds the port with
  ``grpc.so_reuseport`` on (the single-process gateway sets it off, so that a
  taken port fails) and the kernel spreads new connections across the workers'
  queues. The supervisor keeps a taken port an error: it checks the port with a
  plain bind, then holds it with a bound, non-listening ``SO_REUSEPORT`` socket
  for as long as it runs (so a restarted worker can bind it again and nothing
  else can, except a process of the same user setting ``SO_REUSEPORT`` after
  the check, which is what that option allows). Connections still queued at a
  worker that dies are reset; clients reconnect.

The workers are fresh interpreters running the same command line (not forks:
gRPC's C core does not survive ``fork`` with threads running, and a fork would
share the app's state). Each loads the app itself. The supervisor does not import
the app: it starts worker 0, and only once it is ready the others, so that a
mistake in the app is reported once (by that worker, as one line) and the
supervisor exits with its code. A worker learns its sockets and its control
channel from :data:`WORKER_ENV`; it tells the supervisor it is ready over the
control channel, and drains when the channel closes (the supervisor died).
Workers run in their own process group, so that Ctrl+C in a terminal reaches
the supervisor only, which forwards it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .gateway import Gateway, banner

__all__ = ["WORKER_ENV", "Supervisor", "WorkerSpec", "cpu_count", "run_worker", "worker_spec"]

#: The environment variable that makes ``llmbrick serve`` a worker (set by the supervisor).
WORKER_ENV = "_LLMBRICK_WORKER"

#: Seconds before restarting a worker that died; doubled for each death in a row.
FIRST_DELAY = 0.25
#: The longest wait between restarts.
MAX_DELAY = 30.0
#: A worker that served this long died of something new: its back-off starts over.
STABLE_AFTER = 30.0

_log = logging.getLogger("llmbrick.workers")


def cpu_count() -> int:
    """The cores this process may run on (``--workers auto``); respects ``taskset``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker learns from its supervisor.

    Attributes:
        index: the worker's number, from 0.
        workers: how many workers there are.
        control: file descriptor of the worker's end of the control channel.
        http: file descriptors of the HTTP listening sockets.
        grpc_port: the gRPC port the supervisor holds.
    """

    index: int
    workers: int
    control: int
    http: tuple[int, ...]
    grpc_port: int

    def sockets(self) -> list[socket.socket]:
        """The inherited HTTP listening sockets."""
        return [socket.socket(fileno=fd) for fd in self.http]


def worker_spec() -> WorkerSpec | None:
    """This process's :class:`WorkerSpec`, or ``None`` when it is not a worker.

    The variable is removed once read, so that a process the app starts is not
    taken for a worker.
    """
    value = os.environ.pop(WORKER_ENV, None)
    if not value:
        return None
    fields = json.loads(value)
    fields["http"] = tuple(fields["http"])
    return WorkerSpec(**fields)


async def run_worker(gateway: Gateway, spec: WorkerSpec) -> None:
    """Serve ``gateway`` as worker ``spec.index``: say when ready, drain when orphaned.

    Raises:
        Whatever ``gateway.serve`` raises before it is ready (the supervisor then
        exits with this process's code).
    """
    control = socket.socket(fileno=spec.control)
    serving = asyncio.create_task(gateway.serve())
    ready = asyncio.create_task(gateway.started.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        ready.cancel()
        control.close()
        await serving  # raises why it stopped
        return
    reader, writer = await asyncio.open_connection(sock=control)
    message = {
        "pid": os.getpid(),
        "flows": gateway.runtime.registry.names(),
        "urls": gateway.urls,
    }
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()
    # The supervisor never writes: end of file means it is gone, and nobody would
    # forward a signal any more.
    orphaned = asyncio.create_task(reader.read())
    await asyncio.wait({serving, orphaned}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():
        _log.warning("the supervisor is gone: draining")
        gateway.stop()
    orphaned.cancel()
    writer.close()
    await serving


@dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    control: asyncio.StreamWriter
    started: float
    ready: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs ``workers`` copies of ``command``, each a gateway on the shared ports.

    Args:
        command: the worker's command line (the same ``serve`` command).
        workers: how many.
        http: the listening HTTP sockets the workers inherit (none without HTTP).
        grpc_port: the gRPC port (reserved by the caller), 0 without gRPC.
        out: where the endpoint URLs are printed once every worker is ready.
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        http: Sequence[socket.socket],
        grpc_port: int,
        out: TextIO | None = sys.stdout,
    ) -> None:
        if workers < 2:
            raise ValueError(f"a supervisor runs at least 2 workers, got {workers}")
        self.command = list(command)
        self.workers = workers
        self.http = list(http)
        self.grpc_port = grpc_port
        self.out = out
        self._live: dict[int, asyncio.subprocess.Process] = {}  # by worker index
        self._pids: dict[int, int] = {}  # the last process started for each index
        self._stopping = asyncio.Event()
        self._stop_signals: set[int] = set()
        self._clean = True

    async def run(self) -> int:
        """Start every worker, keep them running until SIGTERM or SIGINT, return the exit code.

        Returns:
            0 when every worker drained and exited; a worker's own exit code when it
            failed before serving at start (it said why); 1 when a worker failed while
            stopping.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        first = await self._start(0)
        if isinstance(first, int):
            return self._result() if self._stopping.is_set() else (first or 1)
        # Worker 0 loaded the app without a mistake: start the others at once.
        others = await asyncio.gather(*(self._start(i) for i in range(1, self.workers)))
        started = [first, *(w for w in others if isinstance(w, _Worker))]
        failed = [code for code in others if isinstance(code, int)]
        if failed or self._stopping.is_set():
            stopping = self._stopping.is_set()  # a signal came: not a failure to start
            self._on_signal(signal.SIGTERM)
            await asyncio.gather(*(self._last_exit(w) for w in started))
            return self._result() if stopping else (failed[0] or 1)
        self._announce(started)
        await asyncio.gather(*(self._keep(worker) for worker in started))
        return self._result()

    def _result(self) -> int:
        return 0 if self._clean else 1

    def _announce(self, workers: list[_Worker]) -> None:
        if self.out is None:
            return
        ready = workers[0].ready
        pids = " ".join(str(w.pid) for w in workers)
        extra = [f"  {'workers':<10} {len(workers)} processes: {pids}"]
        print(banner(ready["flows"], ready["urls"], extra), file=self.out, flush=True)

    async def _start(self, index: int) -> _Worker | int:
        """Start worker ``index`` and wait until it serves; its exit code if it does not."""
        if self._stopping.is_set():
            return 0
        ours, theirs = socket.socketpair()
        http = [sock.fileno() for sock in self.http]
        spec = {
            "index": index,
            "workers": self.workers,
            "control": theirs.fileno(),
            "http": http,
            "grpc_port": self.grpc_port,
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *http),
                env={**os.environ, WORKER_ENV: json.dumps(spec)},
                # Ctrl+C in a terminal reaches the supervisor only, which forwards it
                # once (a second one to the whole group would end the streams at once).
                process_group=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._live[index] = process
        self._pids[index] = process.pid
        reader, writer = await asyncio.open_connection(sock=ours)
        line = await reader.readline()  # empty when the worker exits first
        if not line:
            writer.close()
            code = await process.wait()
            self._live.pop(index, None)
            self._note_exit(code)
            return code
        return _Worker(index, process, writer, time.monotonic(), json.loads(line))

    async def _keep(self, worker: _Worker) -> None:
        """Wait for ``worker`` to exit and start another, until stopping."""
        deaths = 0
        while True:
            code = await self._last_exit(worker)
            if self._stopping.is_set():
                return
            lived = time.monotonic() - worker.started
            deaths = 1 if lived >= STABLE_AFTER else deaths + 1
            while True:
                delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (deaths - 1))
                _log.warning(
                    "worker %d (pid %d) %s; starting another in %g s",
                    worker.index,
                    self._pids[worker.index],
                    _exit_text(code),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                started = await self._start(worker.index)
                if isinstance(started, _Worker):
                    break
                if self._stopping.is_set():
                    return
                deaths += 1
                code = started
            worker = started
            _log.warning("worker %d is serving again (pid %d)", worker.index, worker.pid)

    async def _last_exit(self, worker: _Worker) -> int:
        code = await worker.process.wait()
        worker.control.close()
        self._live.pop(worker.index, None)
        self._note_exit(code)
        return code

    def _note_exit(self, code: int) -> None:
        # While stopping, a worker killed by the forwarded signal before it could
        # handle it (still importing the app) had nothing to drain.
        if self._stopping.is_set() and code not in (0, *(-sig for sig in self._stop_signals)):
            self._clean = False

    def _on_signal(self, sig: int) -> None:
        if not self._stopping.is_set():
            _log.info("stopping: every worker drains its streams")
        self._stopping.set()
        self._stop_signals.add(sig)
        # A second SIGINT is forwarded too: the workers then end their streams at once.
        for process in list(self._live.values()):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
