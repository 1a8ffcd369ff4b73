"""The llmbrick gateway: every transport in one process, and the ``llmbrick`` command."""

from __future__ import annotations

from .client import FlowClient, connect
from .demo import demo_pipeline
from .gateway import TRANSPORTS, Gateway
from .loader import TargetError, load_target

__all__ = [
    "TRANSPORTS",
    "FlowClient",
    "Gateway",
    "TargetError",
    "connect",
    "demo_pipeline",
    "load_target",
]
