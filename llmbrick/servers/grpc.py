"""Upstream llmbrick's spelling: ``from llmbrick.servers.grpc import GrpcServer``.

This module exists for users coming from upstream llmbrick. Its names are those
of the ``llmbrick_grpc`` adapter, imported on first use, so importing this module
loads no transport library and the core stays transport-free. Without the
'grpc' extra, using a name raises the adapter's one-line ``ImportError`` naming it.
"""

from __future__ import annotations

import importlib
from typing import Any

# The names are served by __getattr__ below, which ruff's F822 cannot see.
__all__ = ["GrpcClient", "GrpcServer", "RemoteBrick"]  # noqa: F822


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("llmbrick_grpc"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
