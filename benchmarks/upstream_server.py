"""Upstream llmbrick 0.2.10's SSE server with a handler equivalent to the benchmark flow.

Run by the orchestrator as ``benchmarks/.venv-upstream/bin/python benchmarks/upstream_server.py``:
a script (not ``-m``), so that ``import llmbrick`` finds the upstream package installed
in that virtualenv and never this repository's. It prints ``READY <port>`` and serves on
uvicorn with the same settings as our SSE server (uvloop, httptools, no access log).

The handler yields one ``ConversationSSEResponse`` per event (``type="text"``,
``text="tok"``, ``id``, ``progress``), then a ``done`` event, as a user of upstream
would write it, on the same schedule as every other server (``bench_schedule``).
Upstream's request model has no ``metadata`` field, so the count travels in
``maxTokens`` and the mode (with interval and burst) in ``toolChoice``. Its per-request INFO log
line (``enable_request_logging``) is switched off, as for every other server here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

# A script beside common.py (see above), not the benchmarks package.
from common import (  # type: ignore[import-not-found]
    IDLE,
    READY,
    SERVER_CPU,
    bench_params,
    bench_schedule,
    prepare_process,
)


def _app() -> Any:
    # Upstream's modules exist only in the upstream virtualenv, which type checkers never see.
    from llmbrick.protocols.models.http.conversation import (  # type: ignore[import-not-found]
        ConversationResponseProgressEnum,
        ConversationSSERequest,
        ConversationSSEResponse,
    )
    from llmbrick.servers.sse.config import SSEServerConfig  # type: ignore[import-not-found]
    from llmbrick.servers.sse.server import SSEServer  # type: ignore[import-not-found]

    in_progress = ConversationResponseProgressEnum.IN_PROGRESS
    server = SSEServer(config=SSEServerConfig(enable_request_logging=False))

    @server.handler  # type: ignore[untyped-decorator]
    async def bench(request: ConversationSSERequest) -> AsyncIterator[ConversationSSEResponse]:
        params = bench_params({**(request.tool_choice or {}), "count": request.max_tokens})
        loop = asyncio.get_running_loop()
        number = 0
        for pause in bench_schedule(params, loop.time):
            if pause is not None:
                await asyncio.sleep(pause)
            number += 1
            yield ConversationSSEResponse(
                id=str(number), type="text", text="tok", progress=in_progress
            )
        if params.mode == IDLE:
            await loop.create_future()
        yield ConversationSSEResponse(
            id=str(number + 1), type="done", progress=ConversationResponseProgressEnum.DONE
        )

    return server.app


def main() -> int:
    """Serve upstream's app on 127.0.0.1, on a port of the kernel's choosing."""
    # run.py already pinned this process before it started; this covers a start by hand.
    prepare_process(SERVER_CPU)
    import uvicorn
    import uvloop

    app = _app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="none",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    print(f"{READY} {sock.getsockname()[1]}", flush=True)
    os.dup2(2, 1)
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
