"""The app two gateways serve in the Redis tests: ``llmbrick serve tests/redis/app.py``.

``ticks`` yields ``metadata.count`` events, one every ``metadata.every`` seconds, and
keeps running when its client leaves (so another instance can pick the stream up);
its ``finally`` writes how it ended to the file ``metadata.marker``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmbrick import ChatRequest, FlowRegistry

registry = FlowRegistry()


@registry.flow("ticks", on_disconnect="continue")
async def ticks(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """Paced events that run on without a client."""
    meta = request.metadata or {}
    how = "ended"
    try:
        for n in range(int(meta.get("count", 10))):
            if n:
                await asyncio.sleep(float(meta.get("every", 0.01)))
            yield {"type": "text", "text": f"t{n + 1}"}
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        if "marker" in meta:
            Path(meta["marker"]).write_text(how)  # noqa: ASYNC240 - a few bytes, at the end
