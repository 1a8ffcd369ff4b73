"""The one message every part of the package gives when an optional dependency is missing."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(what: str, extra: str, module: str | None) -> ImportError:
    """An ``ImportError`` naming the extra to install, as the adapters' messages do.

    Args:
        what: the part that cannot load (``"llmbrick_telemetry.metrics"``).
        extra: the ``pyproject.toml`` extra that brings it (``"metrics"``).
        module: the module found missing (``ImportError.name``), if known.
    """
    missing = f" ({module} is missing)" if module else ""
    return ImportError(
        f"{what} needs the '{extra}' extra{missing}: pip install '.[{extra}]' from a checkout "
        f"of llmbrick, or pip install 'llmbrick[{extra}] @ <wheel or git URL>'"
    )
