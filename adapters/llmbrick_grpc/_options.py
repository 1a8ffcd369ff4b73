"""Merging channel arguments so that the caller's override the defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["merge_options"]


def merge_options(
    defaults: Iterable[tuple[str, Any]], overrides: Iterable[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """``defaults`` with each key given in ``overrides`` replaced, in place, by its value.

    gRPC keeps the *first* of two arguments with the same key (measured with
    grpcio 1.85), so appending an override to the defaults would silently do
    nothing: each key must appear once.
    """
    merged = dict(defaults)
    merged.update(overrides)
    return list(merged.items())
