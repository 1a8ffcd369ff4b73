"""Authentication and per-caller limits: one policy for every transport.

An *authenticator* is an async callable ``authenticate(ctx) -> Principal``
that raises :class:`~llmbrick.Unauthenticated` or
:class:`~llmbrick.PermissionDenied`. The runtime applies it before any flow
starts, whichever adapter received the request. :class:`ApiKeyAuth` is the
built-in one; :class:`CallerLimits` caps what one caller may run at once and
how fast it may start streams.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .context import Principal, RequestContext
from .errors import Overloaded, Unauthenticated

__all__ = ["ApiKeyAuth", "Authenticator", "CallerLimits", "hash_key"]

Authenticator = Callable[[RequestContext], Awaitable[Principal]]

_HASHED = "sha256:"


def hash_key(key: str) -> str:
    """The form to store a key in a keys file instead of the key itself: ``sha256:<hex>``."""
    return _HASHED + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class ApiKeyAuth:
    """Bearer API keys: ``Authorization: Bearer <key>`` on HTTP, the same in gRPC metadata.

    Keys are kept as SHA-256 digests and compared in constant time; neither a
    key nor its digest is ever logged or echoed. A caller without a key, or
    with a wrong one, gets ``UNAUTHENTICATED`` with the same message either way.

    A keys file has one entry per line: the key itself, or ``sha256:<hex>``
    (see :func:`hash_key`), optionally followed by ``name=<id>`` (the principal
    id used in logs and limits; default ``key-<first 8 hex digits>``) and
    ``scopes=a,b`` (checked by flows registered with ``allow=``). Blank lines
    and lines starting with ``#`` are ignored.

    Args:
        keys: entries in the keys-file syntax (a plain key per item is fine).
    """

    def __init__(self, keys: Iterable[str]) -> None:
        entries = [_parse_entry(line, number) for number, line in enumerate(keys, 1)]
        self._entries = [entry for entry in entries if entry is not None]
        if not self._entries:
            raise ValueError("ApiKeyAuth needs at least one key")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ApiKeyAuth:
        """Read a keys file (see the class docstring).

        Raises:
            ValueError: the file has no key or a malformed line (the message
                names the line number, never its content).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
        return cls(text.splitlines())

    @classmethod
    def from_env(cls, value: str) -> ApiKeyAuth:
        """Keys from a comma-separated string (``LLMBRICK_API_KEYS``)."""
        return cls(part.strip() for part in value.split(","))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<ApiKeyAuth {len(self._entries)} key(s)>"

    async def __call__(self, context: RequestContext) -> Principal:
        token = context.bearer_token()
        if token is None:
            raise Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        # Compare against every entry so the time taken says nothing about which matched.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        if found is None:
            raise Unauthenticated("the API key is not valid")
        return found


def _parse_entry(line: str, number: int) -> _Entry | None:
    words = line.split()
    if not words or words[0].startswith("#"):
        return None
    secret, options = words[0], words[1:]
    if secret.startswith(_HASHED):
        hex_digest = secret[len(_HASHED) :]
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"API keys line {number}: sha256: needs 64 hex digits")
    else:
        digest = hashlib.sha256(secret.encode()).digest()
    name = f"key-{digest.hex()[:8]}"
    scopes: frozenset[str] = frozenset()
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"API keys line {number}: expected name=... or scopes=...")
        if key == "name":
            name = value
        elif key == "scopes":
            scopes = frozenset(part for part in value.split(",") if part)
        else:
            raise ValueError(f"API keys line {number}: unknown option {key!r}")
    return _Entry(digest, Principal(name, scopes))


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class CallerLimits:
    """Per-caller limits: streams at once and a token-bucket rate of new streams.

    A caller is its principal's id, or its peer address when nobody is
    authenticated. Rejections are ``RESOURCE_EXHAUSTED`` with the seconds to
    wait in ``details.retryAfter`` (and ``details.limit == "caller"``, which the
    HTTP adapters answer with 429 rather than the 503 of a full server).

    Args:
        max_streams: streams one caller may run at once (``None``: no cap).
        rate: new streams per second one caller may start (``None``: no cap).
        burst: streams a caller may start at once before ``rate`` applies
            (default: ``rate`` rounded up, at least 1).
        clock: seconds, monotonic (for tests).
    """

    # Buckets of callers idle this long are full again, so they can be forgotten.
    _FORGET_AFTER = 600.0

    def __init__(
        self,
        *,
        max_streams: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams per caller must be at least 1, got {max_streams!r}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate per caller must be positive, got {rate!r}")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.max_streams = max_streams
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate or 1))
        self._clock = clock
        self._running: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._swept = clock()

    def acquire(self, caller: str) -> None:
        """Count a new stream for ``caller``; pair with :meth:`release`.

        Raises:
            Overloaded: the caller is over one of its limits.
        """
        running = self._running.get(caller, 0)
        if self.max_streams is not None and running >= self.max_streams:
            raise Overloaded(
                f"this caller runs its maximum of {self.max_streams} streams at once",
                retry_after=1.0,
                limit="caller",
            )
        if self.rate is not None:
            self._take_token(caller)
        self._running[caller] = running + 1

    def release(self, caller: str) -> None:
        """A stream of ``caller`` ended."""
        left = self._running.get(caller, 0) - 1
        if left > 0:
            self._running[caller] = left
        else:
            self._running.pop(caller, None)

    def running(self, caller: str) -> int:
        """Streams ``caller`` runs now."""
        return self._running.get(caller, 0)

    def _take_token(self, caller: str) -> None:
        assert self.rate is not None
        now = self._clock()
        if now - self._swept > self._FORGET_AFTER:
            self._sweep(now)
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise Overloaded(
                f"this caller starts streams faster than {self.rate:g} per second",
                retry_after=round(wait, 3),
                limit="caller",
            )
        bucket.tokens -= 1

    def _sweep(self, now: float) -> None:
        self._swept = now
        stale = [key for key, b in self._buckets.items() if now - b.stamp > self._FORGET_AFTER]
        for key in stale:
            del self._buckets[key]
