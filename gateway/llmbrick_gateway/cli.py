"""The ``llmbrick`` command: ``serve``, ``flows`` and ``call``.

A mistake (a port in use, a server that is down, a URL whose scheme does not fit
the port, an extra that is not installed, an app that fails to import) is one
line on stderr saying what to do, and a non-zero exit code: 2 for what the
command line or the app got wrong, 1 for what went wrong at run time. ``--debug``
adds the traceback. Anything else escaping is a bug of ours and shows its
traceback as is.

The command imports a transport's adapter only when that transport is used, so it
works with whichever extras are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

from llmbrick import ErrorInfo, Event, FlowRuntime, LLMBrickError, Unavailable
from llmbrick.serving import as_runtime, settle_heap

from ._command import EXIT_FAILED as _EXIT_FAILED
from ._command import EXIT_USAGE as _EXIT_USAGE
from ._command import Failure as _Failure
from ._command import count as _count
from ._command import env as _env
from ._command import help_default as _default
from ._command import port as _port
from ._command import positive_float as _positive_float
from ._command import seconds as _seconds
from ._listen import bind_http, reserve_shared_port
from ._options import ServeSettings, add_serve_options, refuse_unshared_store
from ._transports import TRANSPORTS, installed_transports, require_transport
from ._workers import Supervisor, WorkerSpec, run_worker, worker_spec
from .client import Target, connect, parse_url
from .demo import demo_pipeline
from .gateway import Gateway
from .loader import TargetError, load_target

__all__ = ["main"]

_EXIT_INTERRUPTED = 130

# The adapter a client of each transport imports (see client.connect).
_CLIENT_ADAPTERS = {
    "sse": "llmbrick_sse",
    "websocket": "llmbrick_websocket",
    "grpc": "llmbrick_grpc",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --http-port: ..."; the option name alone reads better.
        message = message.removeprefix("argument ")
        self.exit(_EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _transports(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [name for name in names if name not in TRANSPORTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(TRANSPORTS)}; got {text!r}")
    return names


def _debug_default() -> bool:
    return _env("DEBUG", "") in ("1", "true", "yes")


_DEBUG = "show the traceback behind an error message " + _default("DEBUG", "off", "=1")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmbrick",
        description="Serve llmbrick flows over SSE, WebSocket and gRPC, and call them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Serve TARGET over every installed transport, printing each endpoint's URL "
        "when ready. Each option can also be set by the LLMBRICK_* variable named in its help; "
        "the defaults shown include those set that way.",
    )
    serve.add_argument(
        "target",
        nargs="?",
        default=_env("TARGET"),
        help="path/to/app.py[:obj] or package.module[:obj], obj a Pipeline, Brick, FlowRegistry, "
        "FlowRuntime or server object; without :obj, the one such object the module defines "
        + _default("TARGET", "the built-in demo, a guard and an echo LLM"),
    )
    serve.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="the interface every transport listens on " + _default("HOST"),
    )
    serve.add_argument(
        "--http-port",
        type=_port,
        default=_env("HTTP_PORT", "8000"),
        help="SSE and WebSocket port, 0 for a free one " + _default("HTTP_PORT"),
    )
    serve.add_argument(
        "--grpc-port",
        type=_port,
        default=_env("GRPC_PORT", "50051"),
        help="gRPC port, 0 for a free one " + _default("GRPC_PORT"),
    )
    serve.add_argument(
        "--transports",
        type=_transports,
        default=_env("TRANSPORTS"),
        help="comma-separated subset of sse,websocket,grpc "
        + _default("TRANSPORTS", "every transport whose extra is installed"),
    )
    serve.add_argument(
        "--max-streams",
        type=_count,
        default=_env("MAX_STREAMS"),
        help="streams at once before RESOURCE_EXHAUSTED "
        + _default("MAX_STREAMS", "the app's runtime setting, else no limit"),
    )
    serve.add_argument(
        "--timeout",
        type=_positive_float,
        default=_env("TIMEOUT"),
        help="seconds a stream may run "
        + _default("TIMEOUT", "the app's runtime setting, else no limit"),
    )
    serve.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=_env("DRAIN_TIMEOUT", "10"),
        help="seconds running streams get on shutdown " + _default("DRAIN_TIMEOUT"),
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help=_default("LOG_LEVEL"),
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        default=_debug_default(),
        help="send internal error text to clients (never in production) and show tracebacks "
        + _default("DEBUG", "off", "=1"),
    )
    add_serve_options(serve)

    flows = commands.add_parser(
        "flows",
        help="list a target's flows and request schemas",
        description="List the flows TARGET serves, without serving it.",
    )
    flows.add_argument(
        "target",
        nargs="?",
        default=_env("TARGET"),
        help="as for serve " + _default("TARGET", "the built-in demo"),
    )
    flows.add_argument("--json", action="store_true", help="print the full JSON description")
    flows.add_argument("--debug", action="store_true", default=_debug_default(), help=_DEBUG)

    call = commands.add_parser(
        "call",
        help="stream a flow from a running gateway",
        description="Run FLOW on a running server and print what it streams: text as it "
        "arrives, other events (but meta) as JSON lines. The URL picks the transport: "
        "http://HOST:PORT (SSE), ws://HOST:PORT/ws (WebSocket) or grpc://HOST:PORT (gRPC).",
    )
    call.add_argument("url", help="where the server listens, e.g. http://127.0.0.1:8000")
    call.add_argument(
        "flow",
        nargs="?",
        help="the flow to run (default: the request's flow field, else 'default')",
    )
    call.add_argument(
        "--message",
        "-m",
        action="append",
        default=[],
        help="a user message, for chat flows (repeat for several)",
    )
    call.add_argument(
        "--request",
        help="the request as a JSON object, or @file.json (@- for stdin), for any flow; "
        "--message replaces its messages",
    )
    call.add_argument("--events", action="store_true", help="print every event as JSON")
    call.add_argument(
        "--api-key",
        default=_env("API_KEY"),
        help="sent as 'Authorization: Bearer KEY' (default: the LLMBRICK_API_KEY variable)",
    )
    call.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="an HTTP header (gRPC: metadata) to send, e.g. 'x-request-id: r1' (repeatable)",
    )
    call.add_argument(
        "--ca-file",
        help="a PEM file of the CAs to trust for https://, wss:// and grpcs:// (a private CA)",
    )
    call.add_argument("--debug", action="store_true", default=_debug_default(), help=_DEBUG)
    return parser


# --- serve and flows ----------------------------------------------------------------------


def _load(target: str | None) -> FlowRuntime:
    # As uvicorn does: `llmbrick serve app:pipeline` finds app.py in the working
    # directory, also when run as the console script (whose sys.path lacks it).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return as_runtime(load_target(target) if target else demo_pipeline())
    except TargetError as exc:
        raise _Failure(str(exc), _EXIT_USAGE) from exc


def _chosen_transports(asked: tuple[str, ...] | None) -> tuple[str, ...]:
    """The transports to serve: those asked for, each importable, else every installed one."""
    label = "--transports {}"
    if asked is None:
        installed = installed_transports()
        if installed:
            return installed
        # Nothing imports; the SSE adapter's error names the extra most users want.
        asked, label = ("sse",), "no transport can be served with the extras installed"
    for transport in asked:
        try:
            require_transport(transport)
        except ImportError as exc:
            raise _Failure(f"{label.format(transport)}: {exc}", _EXIT_USAGE) from exc
    return asked


def _bind_failure(host: str, port: int, option: str, label: str, exc: OSError) -> _Failure:
    if isinstance(exc, socket.gaierror):
        return _Failure(
            f"--host {host}: no such address ({exc.strerror}): give an address of this "
            "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
            _EXIT_USAGE,
        )
    if exc.errno == errno.EADDRINUSE:
        return _Failure(
            f"port {port} on {host} is in use ({label}): stop what runs there, or pick "
            f"another port with {option} (0 picks a free one)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return _Failure(
            f"--host {host} is not an address of this machine: give one that is, e.g. "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
            _EXIT_USAGE,
        )
    return _Failure(f"cannot listen on {host} port {port} ({label}): {exc.strerror or exc}")


def _check_port(host: str, port: int, option: str, label: str) -> None:
    """Fail before serving if ``port`` cannot be bound.

    gRPC's C core logs its own bind failure to stderr before we could word it;
    binding plain sockets first lets the mistake be one line of ours. gRPC binds
    every address ``host`` resolves to and needs one of them, so each is tried:
    any in use is a failure, and so is none bindable.
    """
    if port == 0:
        return
    try:
        addresses = {
            (family, address[:2])
            for family, *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        }
    except OSError as exc:
        raise _bind_failure(host, port, option, label, exc) from exc
    problems: list[OSError] = []
    for family, address in sorted(addresses, key=str):
        try:
            with socket.create_server(address, family=family):
                pass
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _bind_failure(host, port, option, label, exc) from exc
            problems.append(exc)
    if len(problems) == len(addresses):
        raise _bind_failure(host, port, option, label, problems[0]) from problems[0]


def _logging(level: str, processes: bool, json_lines: bool = False) -> None:
    if json_lines:
        from llmbrick_telemetry import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    # With workers, several processes write to one stderr: each line names its process.
    name = "%(name)s[%(process)d]" if processes else "%(name)s"
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s {name}: %(message)s"
    )


def _supervise(args: argparse.Namespace, settings: ServeSettings, http: bool, grpc: bool) -> int:
    """``serve --workers N``: bind the ports once, then run N workers on them (see _workers)."""
    host, http_port, grpc_port = args.host, int(args.http_port), int(args.grpc_port)
    _logging(args.log_level, processes=True, json_lines=settings.log_format == "json")
    held: list[socket.socket] = []
    try:
        listening = []
        if http:
            try:
                listening = bind_http(host, http_port)
            except OSError as exc:
                raise _bind_failure(
                    host, http_port, "--http-port", "HTTP: SSE and WebSocket", exc
                ) from exc
            held += listening
        shared = 0
        if grpc:
            try:
                reserved = reserve_shared_port(host, grpc_port)
            except OSError as exc:
                raise _bind_failure(host, grpc_port, "--grpc-port", "gRPC", exc) from exc
            held += reserved
            shared = reserved[0].getsockname()[1]
        # Each worker runs this very command line, as a fresh interpreter.
        command = [sys.executable, "-m", "llmbrick_gateway", *args.argv]
        return asyncio.run(Supervisor(command, settings.workers, listening, shared).run())
    finally:
        for sock in held:
            sock.close()


def _serve(args: argparse.Namespace) -> int:
    transports = _chosen_transports(args.transports)
    http = "sse" in transports or "websocket" in transports
    grpc = "grpc" in transports
    host, http_port, grpc_port = args.host, int(args.http_port), int(args.grpc_port)
    if http and grpc and http_port == grpc_port != 0:
        raise _Failure(
            f"--http-port and --grpc-port are both {http_port}: give them different ports",
            _EXIT_USAGE,
        )
    settings = ServeSettings.from_args(args)  # TLS files, keys, store: before anything runs
    http_settings = settings.http_settings(host) if http else None
    worker = worker_spec()
    if worker is None and settings.workers > 1:
        return _supervise(args, settings, http, grpc)
    runtime = _load(args.target)  # the app's own mistakes first, as uvicorn reports them
    if worker is None:  # a worker's ports are its supervisor's, already bound
        if http:
            _check_port(host, http_port, "--http-port", "HTTP: SSE and WebSocket")
        if grpc:
            _check_port(host, grpc_port, "--grpc-port", "gRPC")
    else:
        grpc_port = worker.grpc_port
    if args.max_streams is not None:
        runtime.max_streams = int(args.max_streams)
    if args.timeout is not None:
        runtime.timeout = float(args.timeout)
    runtime.debug = runtime.debug or args.debug
    settings.apply(runtime)
    if worker is not None:
        refuse_unshared_store(runtime, worker.workers)
    _logging(args.log_level, processes=worker is not None, json_lines=settings.log_format == "json")
    metrics_port = settings.metrics_port
    if metrics_port is not None and metrics_port != 0 and worker is not None:
        metrics_port += worker.index  # one port per worker: each counts its own streams
    gateway = Gateway(
        runtime,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        transports=transports,
        drain_timeout=float(args.drain_timeout),
        log_level=args.log_level,
        http=http_settings,
        tls=settings.tls,
        openai=settings.openai,
        ui=settings.ui,
        playground=settings.playground,
        sse=settings.sse,
        sockets=worker.sockets() if worker is not None and http else None,
        reuse_port=worker is not None,
        out=sys.stdout if worker is None else None,
        metrics=settings.metrics,
        metrics_port=metrics_port,
        tracing=settings.tracing,
    )
    try:
        _run_gateway(gateway, worker)
    except Unavailable as exc:
        raise _Failure(f"the stream store cannot be used: {exc}", _EXIT_USAGE) from exc
    # Only when another process took a port between _check_port and the bind.
    except OSError as exc:
        raise _bind_failure(host, http_port, "--http-port", "HTTP: SSE and WebSocket", exc) from exc
    except RuntimeError as exc:
        if not str(exc).startswith("cannot bind"):
            raise
        raise _Failure(
            f"port {grpc_port} on {host} is in use or cannot be bound (gRPC): pick another "
            "port with --grpc-port (0 picks a free one)"
        ) from exc
    return 0


def _run_gateway(gateway: Gateway, worker: WorkerSpec | None) -> None:
    if worker is None:
        gateway.run()
        return
    settle_heap()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the extras
        asyncio.run(run_worker(gateway, worker))
    else:
        uvloop.run(run_worker(gateway, worker))


def _flows(args: argparse.Namespace) -> int:
    described = _load(args.target).registry.describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for flow in described:
        schema = flow["requestSchema"]
        required = ", ".join(schema.get("required", [])) or "nothing"
        print(f"{flow['name']}: {flow['description'] or '(no description)'}")
        print(f"    requires {required}; fields: {', '.join(schema.get('properties', {}))}")
    return 0


# --- call ---------------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.request is not None:
        text, source = args.request, "--request"
        if text.startswith("@"):
            source = f"--request {text}"
            try:
                text = sys.stdin.read() if text == "@-" else Path(text[1:]).read_text()
            except OSError as exc:
                raise _Failure(f"{source}: cannot read it ({exc.strerror})", _EXIT_USAGE) from exc
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise _Failure(
                f"{source} is not JSON ({exc}): give an object, e.g. "
                """--request '{"numbers": [1, 2]}'""",
                _EXIT_USAGE,
            ) from exc
        if not isinstance(parsed, dict):
            raise _Failure(f"{source} must be a JSON object, not {text.strip()[:40]}", _EXIT_USAGE)
        request = parsed
    elif not args.message:
        raise _Failure(
            "give --message TEXT (a chat flow) or --request JSON (any flow's request)",
            _EXIT_USAGE,
        )
    if args.message:
        request["messages"] = [{"role": "user", "content": text} for text in args.message]
    return request


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _unreachable(exc: BaseException, target: Target, received: int) -> _Failure | None:
    """Word a failure to reach the server (or to stay connected); ``None``: not one."""
    address = target.address
    chain = _causes(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or (
        isinstance(exc, LLMBrickError) and "Connection refused" in str(exc)
    ):
        return _Failure(
            f"nothing is listening at {address}: start the server (llmbrick serve) or check "
            "the host and port in the URL"
        )
    if any(isinstance(e, socket.gaierror) for e in chain) or (
        isinstance(exc, LLMBrickError) and "errors resolving" in str(exc)
    ):
        return _Failure(f"cannot find the host of {address}: check the URL")
    if received:
        return _Failure(f"the connection to {address} broke before the stream ended: {exc}")
    if target.transport == "grpc":
        if isinstance(exc, LLMBrickError) and ("http1.x" in str(exc) or "HTTP/2" in str(exc)):
            return _Failure(
                f"{address} is an HTTP/1.1 server, not gRPC: use http://{address} (SSE) "
                f"or ws://{address}/ws (WebSocket)"
            )
        if isinstance(exc, LLMBrickError):
            return _Failure(f"cannot call {address} over gRPC: {exc.code}: {exc}")
        return None
    wrong_protocol = _wrong_protocol(exc, target)
    if wrong_protocol is not None:
        return wrong_protocol
    if any(isinstance(e, TimeoutError) for e in chain):
        return _Failure(f"{address} did not answer in time: check the URL and the server")
    if isinstance(exc, LLMBrickError | OSError):
        return _Failure(f"cannot call {address}: {exc}")
    return None


def _wrong_protocol(exc: BaseException, target: Target) -> _Failure | None:
    """The server answered, but not in the URL's protocol: the scheme or path is wrong."""
    grpc_hint = f"if {target.address} is a gRPC port, use grpc://{target.address}"
    if target.transport == "sse":
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return _Failure(f"{target.address} did not answer in time: check the URL and server")
        if isinstance(exc, httpx.HTTPError):
            return _Failure(
                f"{target.address} did not answer as an HTTP/1.1 server ({exc}): {grpc_hint}"
            )
        return None
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return _Failure(
            f"{target.scheme}://{target.address}{target.path} refused the WebSocket handshake "
            f"(HTTP {status}): the gateway's WebSocket URL is {target.scheme}://"
            f"{target.address}/ws"
        )
    if isinstance(exc, InvalidHandshake):
        return _Failure(
            f"{target.address} did not answer as a WebSocket server ({exc}): {grpc_hint}"
        )
    return None


class _Printer:
    """Prints a stream as ``call`` shows it, and counts what arrived."""

    def __init__(self, every_event: bool) -> None:
        self.every_event = every_event
        self.received = 0
        self._mid_line = False  # stdout holds text without its line end

    def show(self, event: Event) -> None:
        """Print one event: text inline, other events (but meta) as JSON lines."""
        self.received += 1
        kind = event["type"]
        if self.every_event:
            print(json.dumps(event), flush=True)
        elif kind == "text":
            text = str(event.get("text", ""))
            print(text, end="", flush=True)
            self._mid_line = self._mid_line if not text else not text.endswith("\n")
        elif kind not in ("meta", "done", "error"):
            self.end_line()
            print(json.dumps(event), flush=True)

    def end_line(self) -> None:
        """End a line of text left open, so what follows starts on its own line."""
        if self._mid_line:
            print(flush=True)
            self._mid_line = False


def _path_hint(target: Target, error: ErrorInfo) -> str:
    """A hint when an HTTP URL's path, not the flow, is what the server did not know.

    The web framework answers an unknown path or method with the bare HTTP reason
    phrase, which llmbrick's own errors never are.
    """
    bare = error["message"] in (HTTPStatus.NOT_FOUND.phrase, HTTPStatus.METHOD_NOT_ALLOWED.phrase)
    if target.transport != "sse" or not bare:
        return ""
    return (
        f" ({target.path} is not an SSE endpoint: the gateway's is /chat/completions; "
        f"for WebSocket use ws://{target.address}/ws)"
    )


async def _call(args: argparse.Namespace) -> int:
    try:
        target = parse_url(args.url)
    except ValueError as exc:
        raise _Failure(str(exc), _EXIT_USAGE) from exc
    request = _request(args)
    flow = args.flow or str(request.pop("flow", None) or "default")
    try:
        importlib.import_module(_CLIENT_ADAPTERS[target.transport])
    except ImportError as exc:
        raise _Failure(f"calling {target.scheme}:// URLs: {exc}", _EXIT_USAGE) from exc
    headers: dict[str, str] = {}
    for text in args.header:
        name, colon, value = text.partition(":")
        if not colon or not name.strip():
            raise _Failure(
                f"--header {text!r}: give NAME:VALUE, e.g. 'x-request-id: r1'", _EXIT_USAGE
            )
        headers[name.strip()] = value.strip()
    if args.ca_file is not None and not os.path.isfile(args.ca_file):  # noqa: ASYNC240 - nothing else runs yet
        raise _Failure(f"--ca-file {args.ca_file}: no such file", _EXIT_USAGE)
    printer = _Printer(args.events)
    try:
        async with connect(
            args.url, api_key=args.api_key or None, headers=headers, ca_file=args.ca_file
        ) as client:
            stream = client.stream(flow, request)
            try:
                async for event in stream:
                    printer.show(event)
                    if event["type"] == "error":
                        printer.end_line()
                        error = event["error"]
                        hint = _path_hint(target, error)
                        print(f"error {error['code']}: {error['message']}{hint}", file=sys.stderr)
                        return _EXIT_FAILED
            finally:
                await stream.aclose()
    except Exception as exc:
        printer.end_line()
        if isinstance(exc, ValueError) and not isinstance(exc, LLMBrickError):
            # An option the client refused (a header it cannot send, a CA file for http://).
            raise _Failure(str(exc), _EXIT_USAGE) from exc
        # A client that reached no server raises Unavailable from the transport's own error;
        # the wording reads that error (gRPC's status text is in the Unavailable itself).
        cause = exc.__cause__ if isinstance(exc, LLMBrickError) else None
        seen = cause if cause is not None and target.transport != "grpc" else exc
        failure = _unreachable(seen, target, printer.received)
        failure = failure or _unreachable(exc, target, printer.received)
        if failure is None:
            raise
        raise failure from exc
    printer.end_line()
    return 0


# --- main ---------------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve,
    "flows": _flows,
    "call": lambda args: asyncio.run(_call(args)),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers runs again
    try:
        return _COMMANDS[args.command](args)
    except _Failure as failure:
        if args.debug:
            traceback.print_exception(failure.__cause__ or failure)
        print(f"llmbrick: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`llmbrick call ... | head -1`): stop quietly, and keep
        # Python from complaining about flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _EXIT_FAILED
