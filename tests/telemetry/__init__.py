"""Tests of the telemetry plugin: metrics, tracing and JSON logs on a real runtime."""
