"""``HttpSettings``: the limits and browser policy every llmbrick HTTP app shares.

One object carries them to whichever server builds the app (``SSEServer``,
``WebSocketServer``, the gateway), so the SSE, OpenAI and WebSocket routes on
one port apply the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpSettings", "TlsFiles", "loopback_hosts"]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificate files for HTTPS and WSS (PEM).

    Attributes:
        cert: the certificate chain.
        key: its private key.
        client_ca: CA bundle for client certificates (mutual TLS; gRPC requires
            them when set, HTTP asks for them).
    """

    cert: str
    key: str
    client_ca: str | None = None


def _norm_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _hostname(host_header: str) -> str:
    """``example.com`` from ``example.com:8000``, ``::1`` from ``[::1]:8000``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Limits and browser policy for an HTTP port; every default is in the README's table.

    Attributes:
        max_header_bytes: request line plus headers; more gets 431 and the
            connection is closed.
        header_timeout: seconds a connection may take to send a whole request
            head (also a new connection's first byte); then 408 and close.
        body_timeout: seconds a request body may pause between chunks; then 408.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        max_connections: open connections at once; a request on a connection
            beyond it gets 503 and the connection is closed (``None``: no cap).
        allowed_hosts: host names the ``Host`` header may carry (port ignored;
            ``*.example.com`` allows subdomains; ``*`` allows any). ``None`` checks
            nothing. Against DNS rebinding.
        cors_origins: origins (``https://app.example.com``) allowed to call from
            a browser: CORS for HTTP routes, ``Origin`` check for WebSocket
            upgrades. Same-origin and no-``Origin`` clients are always allowed.
        tls: serve HTTPS and WSS with these files.
    """

    max_header_bytes: int = 64 << 10
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int | None = 10_000
    allowed_hosts: tuple[str, ...] | None = None
    cors_origins: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    _origins: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections!r}")
        origins = set()
        for origin in self.cors_origins:
            if origin != "*":
                parts = urlsplit(origin)
                if (
                    parts.scheme not in ("http", "https")
                    or not parts.netloc
                    or parts.path.strip("/")
                ):
                    raise ValueError(
                        f"a CORS origin is scheme://host[:port], like https://app.example.com; "
                        f"got {origin!r}"
                    )
            origins.add(_norm_origin(origin))
        object.__setattr__(self, "_origins", frozenset(origins))
        for host in self.allowed_hosts or ():
            if not host or ("*" in host and host != "*" and not host.startswith("*.")):
                raise ValueError(f"an allowed host is a name, '*.domain' or '*'; got {host!r}")

    def with_options(self, **changes: Any) -> HttpSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's ``Host`` header names an allowed host."""
        if self.allowed_hosts is None:
            return True
        if not host_header:
            return False
        name = _hostname(host_header)
        for allowed in self.allowed_hosts:
            allowed = allowed.lower()
            if allowed == "*" or name == allowed:
                return True
            if allowed.startswith("*.") and name.endswith(allowed[1:]):
                return True
        return False

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Whether a browser on ``origin`` may use this server (no ``Origin``: not a browser)."""
        if origin is None:
            return True
        normalised = _norm_origin(origin)
        if "*" in self._origins or normalised in self._origins:
            return True
        netloc = urlsplit(normalised).netloc
        return host_header is not None and netloc == host_header.strip().lower()

    def cors_allows(self, origin: str) -> bool:
        """Whether ``origin`` is on the CORS list (same-origin needs no CORS)."""
        return "*" in self._origins or _norm_origin(origin) in self._origins


def loopback_hosts(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """The default ``allowed_hosts`` for a server bound to ``bind``.

    Bound to a loopback address, only loopback names are allowed (what DNS
    rebinding abuses); bound elsewhere, the server cannot know its public
    names, so nothing is checked unless ``extra`` names them.
    """
    names = tuple(extra)
    try:
        loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loopback = bind == "localhost"
    if loopback:
        return (*_LOOPBACK_NAMES, *names)
    return names or None
