"""The production settings of ``llmbrick serve``, from its options and ``LLMBRICK_*`` variables.

TLS files, API keys, per-key limits, the stream store, the HTTP port's limits
and browser policy, which HTTP routes to serve, and how many workers. Each is
checked here, before anything is served (and, with ``--workers``, once, in the
supervisor): a file that cannot be read or a value that makes no sense is one
line and exit code 2. Nothing here imports a transport unless it is served.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from llmbrick import ApiKeyAuth, CallerLimits, FlowRuntime, MemoryStore
from llmbrick.store import StreamStore

from ._command import (
    EXIT_USAGE,
    Failure,
    count,
    env,
    env_flag,
    env_list,
    help_default,
    help_list_default,
    port,
    positive_float,
    seconds,
)
from ._workers import cpu_count

if TYPE_CHECKING:
    from llmbrick_http import HttpSettings

__all__ = ["ServeSettings", "TlsPaths", "add_serve_options", "add_telemetry_options"]

#: ``HttpSettings``' defaults, repeated so that ``--help`` needs no transport installed
#: (a test checks that they agree).
HTTP_DEFAULTS: dict[str, Any] = {
    "max_header_bytes": 64 << 10,
    "header_timeout": 10.0,
    "body_timeout": 30.0,
    "keep_alive_timeout": 5.0,
    "max_connections": 10_000,
}
#: The SSE adapter's defaults for the streaming routes (``create_http_routers``).
SSE_DEFAULTS: dict[str, Any] = {"ping_interval": 15.0, "max_body_size": 1 << 20}

_STORES = "memory (memory?keep_for=SECONDS&...), none or redis://HOST:PORT/DB"


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return cpu_count()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1 or more) or auto")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of streams per second")
    return value


def _store(text: str) -> str:
    value = text.strip()
    scheme = urlsplit(value).scheme
    if _is_memory(value):
        try:
            MemoryStore.from_url(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    elif value != "none" and scheme not in ("redis", "rediss"):
        raise argparse.ArgumentTypeError(f"choose {_STORES}; got {text!r}")
    return value


def _is_memory(spec: str) -> bool:
    return spec == "memory" or spec.startswith("memory?")


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """Add the production options to the ``serve`` parser, each with its ``LLMBRICK_*`` default."""
    group = serve.add_argument_group("processes")
    group.add_argument(
        "--workers",
        type=_workers,
        default=env("WORKERS", "1"),
        metavar="N",
        help="processes serving the same ports, each with its own runtime and limits; auto: "
        "one per core; 1: no supervisor " + help_default("WORKERS"),
    )

    group = serve.add_argument_group("TLS (HTTPS, WSS and gRPC over TLS)")
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=env("TLS_CERT"),
        help="PEM certificate chain; with --tls-key, every transport serves TLS "
        + help_default("TLS_CERT", "plaintext"),
    )
    group.add_argument(
        "--tls-key",
        metavar="FILE",
        default=env("TLS_KEY"),
        help="PEM private key of --tls-cert " + help_default("TLS_KEY", "none"),
    )
    group.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        default=env("TLS_CLIENT_CA"),
        help="PEM CA bundle for client certificates: gRPC requires one signed by it (mutual "
        "TLS), HTTPS asks for one " + help_default("TLS_CLIENT_CA", "none"),
    )

    group = serve.add_argument_group("API keys and per-key limits")
    group.add_argument(
        "--api-keys-file",
        metavar="PATH",
        default=env("API_KEYS_FILE"),
        help="require an API key on every transport (Authorization: Bearer KEY): one key or "
        "sha256:HEX per line, optional name=ID scopes=A,B; or give the keys, comma-separated, in "
        "LLMBRICK_API_KEYS " + help_default("API_KEYS_FILE", "the app's authenticator, else none"),
    )
    group.add_argument(
        "--max-streams-per-key",
        type=count,
        metavar="N",
        default=env("MAX_STREAMS_PER_KEY"),
        help="streams one key (or, without keys, one client address) runs at once, per worker; "
        "more get 429 / RESOURCE_EXHAUSTED " + help_default("MAX_STREAMS_PER_KEY", "no limit"),
    )
    group.add_argument(
        "--rate-per-key",
        type=_rate,
        metavar="R",
        default=env("RATE_PER_KEY"),
        help="new streams per second one key (or client address) may start, per worker, in "
        "bursts of up to ceil(R) " + help_default("RATE_PER_KEY", "no limit"),
    )

    group = serve.add_argument_group("kept streams (resume after a dropped connection)")
    group.add_argument(
        "--store",
        type=_store,
        default=env("STORE"),
        help=f"where streams are kept: {_STORES} (shared by workers and instances) "
        + help_default("STORE", "the app's store, else none"),
    )
    group.add_argument(
        "--grace",
        type=positive_float,
        metavar="SECONDS",
        default=env("GRACE"),
        help="how long a kept stream runs on without a client, for flows with the grace policy "
        + help_default("GRACE", "the app's setting, else 30"),
    )

    group = serve.add_argument_group("HTTP port: limits")
    group.add_argument(
        "--max-connections",
        type=count,
        metavar="N",
        default=env("MAX_CONNECTIONS", str(HTTP_DEFAULTS["max_connections"])),
        help="open connections per worker; a request beyond gets 503 "
        + help_default("MAX_CONNECTIONS"),
    )
    group.add_argument(
        "--max-header-bytes",
        type=count,
        metavar="BYTES",
        default=env("MAX_HEADER_BYTES", str(HTTP_DEFAULTS["max_header_bytes"])),
        help="request line and headers; more gets 431 " + help_default("MAX_HEADER_BYTES"),
    )
    group.add_argument(
        "--header-timeout",
        type=positive_float,
        metavar="SECONDS",
        default=env("HEADER_TIMEOUT", f"{HTTP_DEFAULTS['header_timeout']:g}"),
        help="to send a whole request head; then 408 " + help_default("HEADER_TIMEOUT"),
    )
    group.add_argument(
        "--body-timeout",
        type=positive_float,
        metavar="SECONDS",
        default=env("BODY_TIMEOUT", f"{HTTP_DEFAULTS['body_timeout']:g}"),
        help="a request body may pause between chunks; then 408 " + help_default("BODY_TIMEOUT"),
    )
    group.add_argument(
        "--keep-alive-timeout",
        type=positive_float,
        metavar="SECONDS",
        default=env("KEEP_ALIVE_TIMEOUT", f"{HTTP_DEFAULTS['keep_alive_timeout']:g}"),
        help="an idle connection stays open " + help_default("KEEP_ALIVE_TIMEOUT"),
    )
    group.add_argument(
        "--max-body-size",
        type=count,
        metavar="BYTES",
        default=env("MAX_BODY_SIZE", str(SSE_DEFAULTS["max_body_size"])),
        help="a request body on the streaming routes; more gets 413 "
        + help_default("MAX_BODY_SIZE"),
    )
    group.add_argument(
        "--ping-interval",
        type=seconds,
        metavar="SECONDS",
        default=env("PING_INTERVAL", f"{SSE_DEFAULTS['ping_interval']:g}"),
        help="a silent SSE, OpenAI or UI stream sends a keepalive comment this often, so proxies "
        "keep it open; 0: never " + help_default("PING_INTERVAL"),
    )

    group = serve.add_argument_group("HTTP port: browsers and routes")
    group.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a name the Host header may carry (repeat for several; *.example.com for "
        "subdomains, * for any), against DNS rebinding "
        + help_list_default(
            "ALLOWED_HOSTS", "loopback names when bound to a loopback address, else any"
        ),
    )
    group.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="an origin (https://app.example.com) whose pages may call the HTTP routes and open "
        "WebSockets (repeat for several; * for any) " + help_list_default("CORS_ORIGINS", "none"),
    )
    group.add_argument(
        "--no-openai",
        action="store_true",
        default=env_flag("NO_OPENAI"),
        help="do not serve the OpenAI API under /v1 " + help_default("NO_OPENAI", "served", "=1"),
    )
    group.add_argument(
        "--no-ui",
        action="store_true",
        default=env_flag("NO_UI"),
        help="do not serve the AI SDK's UI message stream at /v1/ui/chat "
        + help_default("NO_UI", "served", "=1"),
    )
    group.add_argument(
        "--no-playground",
        action="store_true",
        default=env_flag("NO_PLAYGROUND"),
        help="do not serve the playground page at /playground (and / redirecting to it) "
        + help_default("NO_PLAYGROUND", "served", "=1"),
    )
    add_telemetry_options(serve)


def _metrics_installed() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def add_telemetry_options(serve: argparse.ArgumentParser) -> None:
    """Metrics, tracing and the log format (see :mod:`llmbrick_telemetry`)."""
    group = serve.add_argument_group("telemetry")
    metrics_default = env("METRICS")
    group.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=(
            metrics_default.strip().lower() in ("1", "true", "yes")
            if metrics_default is not None
            else _metrics_installed()
        ),
        help="Prometheus metrics at /metrics on the HTTP port "
        + help_default("METRICS", "on when prometheus-client is installed", "=0|1"),
    )
    group.add_argument(
        "--metrics-port",
        type=port,
        default=env("METRICS_PORT"),
        metavar="PORT",
        help="also serve the metrics on a port of their own (for gRPC-only gateways; with "
        "--workers N, worker i uses PORT+i) " + help_default("METRICS_PORT", "none"),
    )
    group.add_argument(
        "--otel",
        action="store_true",
        default=env_flag("OTEL"),
        help="trace streams and bricks with OpenTelemetry, into the global tracer provider "
        "(configure it with the OpenTelemetry SDK's OTEL_* variables, e.g. under "
        "opentelemetry-instrument) " + help_default("OTEL", "off", "=1"),
    )
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=env("LOG_FORMAT", "text"),
        help="json: one JSON object per line, for log shippers " + help_default("LOG_FORMAT"),
    )


@dataclass(frozen=True, slots=True)
class TlsPaths:
    """The TLS files of ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``, checked."""

    cert: str
    key: str
    client_ca: str | None = None


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; fail instead.
    return b""


def _tls(args: argparse.Namespace) -> TlsPaths | None:
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise Failure("--tls-client-ca needs --tls-cert and --tls-key", EXIT_USAGE)
        return None
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        raise Failure(f"TLS needs both --tls-cert and --tls-key: give {missing}", EXIT_USAGE)
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise Failure(
                f"{option} {path}: cannot read it ({exc.strerror or exc})", EXIT_USAGE
            ) from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise Failure(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its "
            f"unencrypted private key ({exc.reason or exc})",
            EXIT_USAGE,
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(client_ca)
        except ssl.SSLError as exc:
            raise Failure(
                f"--tls-client-ca {client_ca}: not a PEM CA certificate ({exc.reason or exc})",
                EXIT_USAGE,
            ) from exc
    return TlsPaths(cert, key, client_ca)


def _auth(args: argparse.Namespace) -> ApiKeyAuth | None:
    path, keys = args.api_keys_file, env("API_KEYS")
    if path is not None and keys is not None:
        raise Failure(
            "both --api-keys-file (or LLMBRICK_API_KEYS_FILE) and LLMBRICK_API_KEYS give API "
            "keys: keep one",
            EXIT_USAGE,
        )
    try:
        if path is not None:
            return ApiKeyAuth.from_file(path)
        if keys is not None:
            return ApiKeyAuth.from_env(keys)
    except ValueError as exc:
        # The message names the file and line, never a key.
        source = "" if path is None or path in str(exc) else f"--api-keys-file {path}: "
        if path is None:
            source = "LLMBRICK_API_KEYS: "
        raise Failure(f"{source}{exc}", EXIT_USAGE) from exc
    return None


def _shown_url(url: str) -> str:
    """``url`` without its password, to name it in a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_store(spec: str | None, workers: int) -> None:
    if spec is not None and _is_memory(spec) and workers > 1:
        raise Failure(
            f"--store memory keeps streams inside one process, and with --workers {workers} a "
            "resume can reach another worker: use a shared store (--store redis://HOST:PORT/DB) "
            "or --workers 1",
            EXIT_USAGE,
        )
    if spec is not None and spec != "none" and not _is_memory(spec):
        try:
            _redis_store()
        except ImportError as exc:
            raise Failure(
                f"--store {_shown_url(spec)}: redis stores need the llmbrick_redis plugin and "
                f"the redis client ({exc})",
                EXIT_USAGE,
            ) from exc


def _build_store(spec: str) -> StreamStore | None:
    if spec == "none":
        return None
    if _is_memory(spec):
        return MemoryStore.from_url(spec)
    try:
        store: StreamStore = _redis_store().from_url(spec)
    except ValueError as exc:
        raise Failure(f"--store {_shown_url(spec)}: {exc}", EXIT_USAGE) from exc
    return store


def _redis_store() -> Any:
    """``llmbrick_redis.RedisStore``, imported only when a ``redis://`` store is asked for.

    Raises:
        ImportError: the plugin or its Redis client is not installed.
    """
    # By name, so that this module needs neither the plugin nor its types.
    plugin = importlib.import_module("llmbrick_redis")
    store = getattr(plugin, "RedisStore", None)
    if store is None:
        raise ImportError("llmbrick_redis has no RedisStore")
    return store


def refuse_unshared_store(runtime: FlowRuntime, workers: int) -> None:
    """With several workers, a store that is not shared would send resumes astray.

    Raises:
        Failure: the runtime keeps streams in a store only this process sees.
    """
    store = runtime.store
    if workers > 1 and store is not None and not store.shared:
        raise Failure(
            f"the app keeps streams in a {type(store).__name__}, inside one process, and with "
            f"--workers {workers} a resume can reach another worker: use a shared store "
            "(--store redis://HOST:PORT/DB) or --workers 1",
            EXIT_USAGE,
        )


@dataclass(frozen=True)
class ServeSettings:
    """``serve``'s production settings, checked; see :func:`add_serve_options`."""

    workers: int
    tls: TlsPaths | None
    auth: ApiKeyAuth | None
    limits: CallerLimits | None
    store: str | None
    grace: float | None
    http_limits: dict[str, Any]
    allowed_hosts: tuple[str, ...]
    cors_origins: tuple[str, ...]
    sse: dict[str, Any]
    openai: bool
    ui: bool
    playground: bool
    metrics: bool = False
    metrics_port: int | None = None
    tracing: bool = False
    log_format: str = "text"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
        """Check every production option of ``args``.

        Raises:
            Failure: a file cannot be read or a value makes no sense (exit code 2).
        """
        workers = int(args.workers)
        _check_store(args.store, workers)
        limits = None
        per_key, rate = args.max_streams_per_key, args.rate_per_key
        if per_key is not None or rate is not None:
            limits = CallerLimits(
                max_streams=None if per_key is None else int(per_key),
                rate=None if rate is None else float(rate),
            )
        hosts = args.allowed_host if args.allowed_host is not None else env_list("ALLOWED_HOSTS")
        origins = args.cors_origin if args.cors_origin is not None else env_list("CORS_ORIGINS")
        return cls(
            workers=workers,
            tls=_tls(args),
            auth=_auth(args),
            limits=limits,
            store=args.store,
            grace=None if args.grace is None else float(args.grace),
            http_limits={
                "max_connections": int(args.max_connections),
                "max_header_bytes": int(args.max_header_bytes),
                "header_timeout": float(args.header_timeout),
                "body_timeout": float(args.body_timeout),
                "keep_alive_timeout": float(args.keep_alive_timeout),
            },
            allowed_hosts=tuple(hosts or ()),
            cors_origins=tuple(origins or ()),
            sse={
                "ping_interval": float(args.ping_interval),
                "max_body_size": int(args.max_body_size),
            },
            openai=not args.no_openai,
            ui=not args.no_ui,
            playground=not args.no_playground,
            metrics=bool(args.metrics),
            metrics_port=None if args.metrics_port is None else int(args.metrics_port),
            tracing=bool(args.otel),
            log_format=args.log_format,
        )

    def http_settings(self, host: str) -> HttpSettings:
        """The HTTP port's settings for a gateway bound to ``host`` (needs the HTTP adapter).

        ``Host`` names: loopback ones when ``host`` is a loopback address, plus
        ``--allowed-host``; elsewhere only those, and no check without any.

        Raises:
            Failure: a CORS origin or an allowed host is malformed.
        """
        from llmbrick_http import HttpSettings, TlsFiles, loopback_hosts

        tls = self.tls
        try:
            settings = HttpSettings(
                **self.http_limits,
                allowed_hosts=loopback_hosts(host, extra=self.allowed_hosts),
                cors_origins=self.cors_origins,
                tls=None if tls is None else TlsFiles(tls.cert, tls.key, tls.client_ca),
            )
        except ValueError as exc:
            option = "--cors-origin" if "CORS" in str(exc) else "--allowed-host"
            raise Failure(f"{option}: {exc}", EXIT_USAGE) from exc
        return settings

    def apply(self, runtime: FlowRuntime) -> None:
        """Give ``runtime`` the API keys, per-key limits, store and grace asked for.

        Raises:
            Failure: the app set its own authenticator and keys were given too.
        """
        if self.auth is not None:
            if runtime.authenticator is not None:
                raise Failure(
                    "the app's runtime has its own authenticator: drop --api-keys-file and "
                    "LLMBRICK_API_KEYS, or the app's authenticator",
                    EXIT_USAGE,
                )
            runtime.authenticator = self.auth
        if self.limits is not None:
            runtime.caller_limits = self.limits
        if self.store is not None:
            runtime.store = _build_store(self.store)
        if self.grace is not None:
            runtime.grace = self.grace
