"""Telemetry for llmbrick: Prometheus metrics, OpenTelemetry tracing and JSON logs.

Everything here is a plugin on the runtime's observer hooks (see
:mod:`llmbrick.observe`) or on stdlib logging; no adapter knows about it.

- :class:`PrometheusObserver`, :func:`create_metrics_router`, :func:`serve_metrics`:
  metrics, with the ``metrics`` extra (prometheus-client).
- :class:`TracingObserver`: a span per stream and per brick, with the ``otel``
  extra (opentelemetry-api and -sdk).
- :class:`JsonFormatter`: JSON log lines; needs nothing.
- :func:`install`: the observers on a runtime in one call.

``import llmbrick_telemetry`` needs no extra: each name loads its part when
first used, and a part whose extra is missing raises an ``ImportError`` saying
which extra to install (``from llmbrick_telemetry import PrometheusObserver``
without prometheus-client: "... needs the 'metrics' extra ...").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .bundle import Telemetry, install
from .logs import JsonFormatter

if TYPE_CHECKING:
    from .metrics import (
        BRICK_BUCKETS,
        DURATION_BUCKETS,
        FIRST_EVENT_BUCKETS,
        MetricsServer,
        PrometheusObserver,
        create_metrics_router,
        serve_metrics,
    )
    from .tracing import NOT_ERRORS, TracingObserver

__all__ = [
    "BRICK_BUCKETS",
    "DURATION_BUCKETS",
    "FIRST_EVENT_BUCKETS",
    "NOT_ERRORS",
    "JsonFormatter",
    "MetricsServer",
    "PrometheusObserver",
    "Telemetry",
    "TracingObserver",
    "create_metrics_router",
    "install",
    "serve_metrics",
]

# Names loaded on first use, so that each extra is needed only by what uses it.
_LAZY = {
    "BRICK_BUCKETS": "metrics",
    "DURATION_BUCKETS": "metrics",
    "FIRST_EVENT_BUCKETS": "metrics",
    "MetricsServer": "metrics",
    "PrometheusObserver": "metrics",
    "create_metrics_router": "metrics",
    "serve_metrics": "metrics",
    "NOT_ERRORS": "tracing",
    "TracingObserver": "tracing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # An ImportError naming the missing extra propagates as is, also through
    # `from llmbrick_telemetry import name`.
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
