"""Upstream llmbrick's import paths, for code written against upstream llmbrick.

Upstream spells ``from llmbrick.servers.sse import SSEServer``; here the
transports live in their adapter packages (``llmbrick_sse``, ``llmbrick_websocket``,
``llmbrick_grpc``), each installed by its extra. The modules of this package are
lazy shims over those adapters: ``import llmbrick.servers`` (or ``.sse``) imports
no transport library, and an adapter is imported only when one of its names is
used, so the core stays transport-free. An adapter whose extra is missing raises
its one-line ``ImportError`` naming the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["grpc", "sse", "websocket"]


def __getattr__(name: str) -> Any:
    # `llmbrick.servers.sse` as an attribute, after only `import llmbrick.servers`.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
