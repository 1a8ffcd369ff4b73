"""The app the gateway tests serve: ``llmbrick serve tests/gateway/flows_app.py:registry``.

Each flow shows the test something it could not see from outside:

- ``pid`` answers with the id of the process that ran it, so a test can tell which
  worker served a connection.
- ``held`` answers with its process id, then waits until the file ``metadata.gate``
  exists (the test creates it when it has seen what it wanted: a worker killed, a
  drain begun) and ends with ``released``. Its ``finally`` writes how it ended to
  ``metadata.marker`` when given, so a test sees a flow cancelled.
- ``admin`` may be run only by a principal with the ``admin`` scope.
- ``default`` echoes the last message, for ``llmbrick call``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmbrick import ChatRequest, DeadlineExceeded, FlowRegistry

registry = FlowRegistry()

#: How long ``held`` waits for its gate before giving up (a test that failed midway).
GATE_LIMIT = 60.0


def _meta(request: ChatRequest) -> dict[str, Any]:
    return request.metadata or {}


@registry.flow("default")
async def echo(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """The last message, back."""
    yield {"type": "text", "text": request.messages[-1].content if request.messages else ""}


@registry.flow("pid")
async def pid(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """The process id of the worker that ran the stream."""
    yield {"type": "text", "text": str(os.getpid())}


@registry.flow("held")
async def held(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """The process id, then nothing until the file ``metadata.gate`` exists, then ``released``."""
    outcome = "finished"
    try:
        yield {"type": "text", "text": str(os.getpid())}
        gate = Path(_meta(request)["gate"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATE_LIMIT
        # The file is the test's signal; poll it, bounded. A stat is cheaper than a thread hop.
        while not gate.exists():  # noqa: ASYNC240
            if loop.time() > deadline:
                raise DeadlineExceeded(f"gate file {gate} never appeared")
            await asyncio.sleep(0.01)
        yield {"type": "text", "text": "released"}
    except BaseException as exc:  # CancelledError or GeneratorExit: recorded, re-raised
        outcome = type(exc).__name__
        raise
    finally:
        marker = _meta(request).get("marker")
        if marker:
            # Written whole, then renamed: a test waiting for it never reads it half-written.
            part = Path(marker).with_suffix(".part")
            part.write_text(outcome)
            part.replace(marker)


@registry.flow("admin", allow=["admin"])
async def admin(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """For principals with the ``admin`` scope only."""
    yield {"type": "text", "text": "admin only"}
