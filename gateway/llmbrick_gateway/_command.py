"""What every part of the ``llmbrick`` command shares: the one-line failure and the defaults.

A mistake is reported as one line on stderr and an exit code (see :mod:`.cli`);
every option can also be set by an ``LLMBRICK_*`` environment variable, and its
help says which, with the default in effect.
"""

from __future__ import annotations

import argparse
import os

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "Failure",
    "count",
    "env",
    "env_flag",
    "env_list",
    "help_default",
    "help_list_default",
    "port",
    "positive_float",
    "seconds",
]

#: Something went wrong while running (a server down, a port taken meanwhile).
EXIT_FAILED = 1
#: The command line, the app or the installation is wrong: nothing was served.
EXIT_USAGE = 2


class Failure(Exception):
    """A mistake to report as one line (the message) with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``LLMBRICK_<name>``, else ``default``."""
    return os.environ.get(f"LLMBRICK_{name}", default)


def env_flag(name: str) -> bool:
    """Whether ``LLMBRICK_<name>`` turns a switch on (``1``, ``true``, ``yes``)."""
    return (env(name) or "").strip().lower() in ("1", "true", "yes")


def env_list(name: str) -> list[str] | None:
    """``LLMBRICK_<name>`` split at commas (``None`` when unset), for repeatable options."""
    value = env(name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def help_default(name: str, otherwise: str | None = None, example: str = "") -> str:
    """``(default: X; LLMBRICK_NAME)`` for a help text: the variable's value if set."""
    shown = "%(default)s" if otherwise is None or env(name) else otherwise
    return f"(default: {shown}; LLMBRICK_{name}{example})"


def help_list_default(name: str, otherwise: str) -> str:
    """As :func:`help_default` for a repeatable option, whose variable is comma-separated."""
    shown = (env(name) or otherwise).replace("%", "%%")
    return f"(default: {shown}; LLMBRICK_{name}, comma-separated)"


# --- argparse types: a bad value is one line naming the option ---------------------------


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: a free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number from 0 to 65535")
    return value


def positive_float(text: str) -> float:
    """A number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
