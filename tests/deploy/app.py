"""The app the deployment tests serve behind nginx: ``llmbrick serve tests/deploy/app.py``.

Each flow takes its parameters from the request's ``metadata``, so one gateway serves
every scenario:

- ``gated`` yields one event, then waits until the file ``metadata.gate`` exists (the test
  creates it after it has *received* that first event), then yields ``metadata.more``
  more. A proxy that buffered the stream would hold the first event back and the test
  would never create the file: the stream could only finish if it arrives event by event.
- ``silent`` yields, says nothing for ``metadata.silence`` seconds (a model thinking),
  then yields again: the gateway's SSE pings are all that crosses the proxy meanwhile.
- ``hanging`` yields once and then waits forever; its ``finally`` writes how it ended to
  the file ``metadata.marker``, so a test sees the flow was cancelled when its client
  went away.

The keepalive test serves it with ``--ping-interval``, to scale the proxy's 60 s read
timeout and the gateway's 15 s pings down to seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmbrick import ChatRequest, DeadlineExceeded, FlowRegistry

registry = FlowRegistry()


def _meta(request: ChatRequest) -> dict[str, Any]:
    return request.metadata or {}


#: How long ``gated`` waits for its file before giving up (a test that failed midway).
GATE_LIMIT = 30.0


@registry.flow("gated")
async def gated(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """One event, then the rest once the file ``metadata.gate`` exists."""
    yield {"type": "text", "text": "first "}
    gate = Path(_meta(request)["gate"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GATE_LIMIT
    # The file is the test's signal; poll it, bounded. A stat is cheaper than a thread hop.
    while not gate.exists():  # noqa: ASYNC240
        if loop.time() > deadline:
            raise DeadlineExceeded(f"gate file {gate} never appeared")
        await asyncio.sleep(0.01)
    for n in range(int(_meta(request).get("more", 3))):
        yield {"type": "text", "text": f"{n} "}


@registry.flow("silent")
async def silent(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """``before``, ``metadata.silence`` seconds of nothing, then ``after``."""
    yield {"type": "text", "text": "before "}
    await asyncio.sleep(float(_meta(request)["silence"]))
    yield {"type": "text", "text": "after"}


@registry.flow("hanging")
async def hanging(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """Yields once and waits until cancelled; writes how it ended to ``metadata.marker``."""
    outcome = "finished"
    try:
        yield {"type": "text", "text": "started"}
        await asyncio.Event().wait()
    except BaseException as exc:  # CancelledError or GeneratorExit: recorded, re-raised
        outcome = type(exc).__name__
        raise
    finally:
        # Written whole, then renamed: a test waiting for the file never reads it half-written.
        marker = Path(_meta(request)["marker"])
        marker.with_suffix(".part").write_text(outcome)
        marker.with_suffix(".part").replace(marker)
