"""The ``llmbrick`` command: ``serve``, ``flows`` and ``call``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from llmbrick import FlowRuntime, as_runtime

from .client import connect
from .demo import demo_pipeline
from .gateway import TRANSPORTS, Gateway
from .loader import TargetError, load_target

__all__ = ["main"]

_EXIT_USAGE = 2


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"LLMBRICK_{name}", default)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _transports(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [name for name in names if name not in TRANSPORTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(TRANSPORTS)}; got {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmbrick",
        description="Serve llmbrick flows over SSE, WebSocket and gRPC, and call them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Serve TARGET (default: the built-in demo pipeline) over every transport. "
        "Each option can also be set as the LLMBRICK_* variable named in its help.",
    )
    serve.add_argument(
        "target",
        nargs="?",
        default=_env("TARGET"),
        help="path/to/app.py:obj or package.module:obj, obj a Pipeline, Brick, FlowRegistry "
        "or FlowRuntime (LLMBRICK_TARGET)",
    )
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="(LLMBRICK_HOST)")
    serve.add_argument(
        "--http-port", type=_port, default=_env("HTTP_PORT", "8000"), help="(LLMBRICK_HTTP_PORT)"
    )
    serve.add_argument(
        "--grpc-port", type=_port, default=_env("GRPC_PORT", "50051"), help="(LLMBRICK_GRPC_PORT)"
    )
    serve.add_argument(
        "--transports",
        type=_transports,
        default=_env("TRANSPORTS", ",".join(TRANSPORTS)),
        help="comma-separated subset of sse,websocket,grpc (LLMBRICK_TRANSPORTS)",
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=_env("MAX_STREAMS"),
        help="streams at once before RESOURCE_EXHAUSTED (LLMBRICK_MAX_STREAMS)",
    )
    serve.add_argument(
        "--timeout",
        type=_positive_float,
        default=_env("TIMEOUT"),
        help="seconds a stream may run (LLMBRICK_TIMEOUT)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=_env("DRAIN_TIMEOUT", "10"),
        help="seconds running streams get on shutdown (LLMBRICK_DRAIN_TIMEOUT)",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="(LLMBRICK_LOG_LEVEL)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        default=_env("DEBUG", "") in ("1", "true", "yes"),
        help="send internal error text to clients; never in production (LLMBRICK_DEBUG=1)",
    )

    flows = commands.add_parser("flows", help="list a target's flows and request schemas")
    flows.add_argument("target", nargs="?", default=_env("TARGET"))
    flows.add_argument("--json", action="store_true", help="print the full JSON description")

    call = commands.add_parser(
        "call",
        help="stream a flow from a running gateway",
        description="URL picks the transport: http://host:port (SSE), ws://host:port/ws "
        "(WebSocket) or grpc://host:port (gRPC).",
    )
    call.add_argument("url")
    call.add_argument("flow", nargs="?", default="default")
    call.add_argument("--message", "-m", action="append", default=[], help="a user message")
    call.add_argument("--request", help="the whole request as JSON (merged under the messages)")
    call.add_argument("--events", action="store_true", help="print every event as JSON")
    return parser


def _load(target: str | None) -> FlowRuntime:
    return as_runtime(load_target(target) if target else demo_pipeline())


def _serve(args: argparse.Namespace) -> int:
    runtime = _load(args.target)
    if args.max_streams is not None:
        if int(args.max_streams) < 1:
            raise TargetError("--max-streams must be at least 1")
        runtime.max_streams = int(args.max_streams)
    if args.timeout is not None:
        runtime.timeout = float(args.timeout)
    runtime.debug = runtime.debug or args.debug
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    gateway = Gateway(
        runtime,
        host=args.host,
        http_port=int(args.http_port),
        grpc_port=int(args.grpc_port),
        transports=args.transports,
        drain_timeout=float(args.drain_timeout),
        log_level=args.log_level,
    )
    gateway.run()
    return 0


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


async def _call(args: argparse.Namespace) -> int:
    try:
        request: dict[str, Any] = json.loads(args.request) if args.request else {}
    except ValueError as exc:
        raise TargetError(f"--request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise TargetError("--request must be a JSON object")
    if args.message:
        request["messages"] = [{"role": "user", "content": text} for text in args.message]
    elif "messages" not in request:
        raise TargetError("give --message TEXT (or --request with messages)")
    async with connect(args.url) as client:
        async for event in client.stream(args.flow, request):
            if args.events:
                print(json.dumps(event), flush=True)
            elif event["type"] == "text":
                print(event.get("text", ""), end="", flush=True)
            if event["type"] == "error":
                error = event["error"]
                print(f"\nerror {error['code']}: {error['message']}", file=sys.stderr)
                return 1
    if not args.events:
        print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad target or usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "flows":
            return _flows(args)
        return asyncio.run(_call(args))
    except (TargetError, ValueError) as exc:
        print(f"llmbrick: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except OSError as exc:
        print(f"llmbrick: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
