"""Telemetry for llmbrick: Prometheus metrics, OpenTelemetry tracing and JSON logs (work in progress)."""
