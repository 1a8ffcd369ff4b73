"""Server entry points: ``python -m benchmarks.servers KIND`` prints ``READY <port>`` and serves.

Every server streams the same flow: ``count`` events ``{"type": "text", "text": "tok"}``
stamped with ``id`` and ``progress``, then a ``done`` event. The request carries the
parameters as ``metadata.bench = {"count", "mode", "interval"}`` (SSE body, WebSocket
``start`` request, gRPC ``extra_json``). Kinds:

- ``sse``, ``ws``, ``grpc``: llmbrick's adapters as shipped (``SSEServer``,
  ``WebSocketServer`` with its own uvicorn options, ``GrpcServer``), one registered flow.
- ``bare-sse``: a bare ASGI app on the same uvicorn (uvloop + httptools) writing
  hand-framed SSE bytes, the event dict encoded with orjson, one ASGI send per event.
- ``bare-ws``: ``websockets.asyncio.server.serve`` (compression off) sending the frames
  of llmbrick's WebSocket protocol, one frame per event.
- ``bare-grpc``: a bare ``grpc.aio`` servicer (no options) yielding one
  ``StreamResponse`` with one ``Event`` per event, from llmbrick's generated messages.

The upstream llmbrick server lives in ``upstream_server.py`` (another virtualenv).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.common import FAST, IDLE, READY, SERVER_CPU, bench_params, prepare_process

__all__ = ["KINDS", "main"]

KINDS = ("sse", "ws", "grpc", "bare-sse", "bare-ws", "bare-grpc")
_BACKLOG = 4096


def _announce(port: int) -> None:
    print(f"{READY} {port}", flush=True)
    # From now on nobody reads our stdout: send stray prints to the stderr log instead.
    os.dup2(2, 1)


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(_BACKLOG)
    return sock


async def _events(count: int, mode: str, interval: float) -> AsyncIterator[dict[str, Any]]:
    """The flow of the bare servers; the same loop as the llmbrick flow below."""
    for number in range(count):
        if number:
            await asyncio.sleep(0 if mode == FAST else interval)
        yield {"type": "text", "text": "tok"}
    if mode == IDLE:
        await asyncio.get_running_loop().create_future()  # until the client leaves


def _flows() -> Any:
    from llmbrick import ChatRequest, FlowRegistry

    registry = FlowRegistry()

    @registry.flow("default")
    async def bench(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        count, mode, interval = bench_params((request.metadata or {}).get("bench"))
        for number in range(count):
            if number:
                await asyncio.sleep(0 if mode == FAST else interval)
            yield {"type": "text", "text": "tok"}
        if mode == IDLE:
            await asyncio.get_running_loop().create_future()

    return registry


def _uvicorn(app: Any, **options: Any) -> None:
    import uvicorn
    import uvloop

    settings: dict[str, Any] = {
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
        "backlog": _BACKLOG,
        **options,
    }
    sock = _listen()
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    _announce(sock.getsockname()[1])
    uvloop.run(server.serve(sockets=[sock]))


def _serve_sse() -> None:
    from llmbrick_sse import SSEServer

    _uvicorn(SSEServer(_flows()).app, ws="none")


def _serve_ws() -> None:
    from llmbrick_websocket import WebSocketServer

    server = WebSocketServer(_flows())
    _uvicorn(server.app, **server.uvicorn_options())


async def _serve_grpc() -> None:
    from llmbrick_grpc import GrpcServer

    server = GrpcServer(_flows())
    port = await server.start("127.0.0.1", 0)
    _announce(port)
    await server.wait_for_termination()


def _bare_sse_app() -> Any:
    import orjson

    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
    ]
    end = {"type": "http.response.body", "body": b"", "more_body": False}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        request = orjson.loads(b"".join(chunks))
        count, mode, interval = bench_params(request["metadata"]["bench"])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        number = 0
        async for event in _events(count, mode, interval):
            number += 1
            event["id"] = str(number)
            event["progress"] = "IN_PROGRESS"
            frame = b"id: %d\nevent: message\ndata: %s\n\n" % (number, orjson.dumps(event))
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        done = {"type": "done", "id": str(number + 1), "progress": "DONE"}
        frame = b"id: %d\nevent: message\ndata: %s\n\n" % (number + 1, orjson.dumps(done))
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send(end)

    return app


async def _serve_bare_ws() -> None:
    import orjson
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = orjson.loads(message)
            stream_id = frame["id"]
            count, mode, interval = bench_params(frame["request"]["metadata"]["bench"])
            number = 0
            async for event in _events(count, mode, interval):
                number += 1
                event["id"] = str(number)
                event["progress"] = "IN_PROGRESS"
                await ws.send(orjson.dumps({"id": stream_id, "event": event}), text=True)
            done = {"type": "done", "id": str(number + 1), "progress": "DONE"}
            await ws.send(orjson.dumps({"id": stream_id, "event": done}), text=True)

    sock = _listen()
    async with serve(handler, sock=sock, compression=None) as server:
        _announce(sock.getsockname()[1])
        await server.serve_forever()


async def _serve_bare_grpc() -> None:
    import grpc
    import orjson

    from llmbrick_grpc._generated import event_pb2, flow_pb2, flow_pb2_grpc

    in_progress = event_pb2.PROGRESS_IN_PROGRESS

    class Servicer(flow_pb2_grpc.FlowServiceServicer):
        async def Invoke(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

        async def ListFlows(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

        async def Stream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            extra = orjson.loads(request.extra_json)
            count, mode, interval = bench_params(extra["metadata"]["bench"])
            number = 0
            async for event in _events(count, mode, interval):
                number += 1
                yield flow_pb2.StreamResponse(
                    events=[
                        event_pb2.Event(
                            type=event["type"],
                            text=event["text"],
                            id=str(number),
                            progress=in_progress,
                        )
                    ]
                )
            done = event_pb2.Event(
                type="done", id=str(number + 1), progress=event_pb2.PROGRESS_DONE
            )
            yield flow_pb2.StreamResponse(events=[done])

    server = grpc.aio.server()
    flow_pb2_grpc.add_FlowServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(port)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    """Start one server (see the module docstring for the kinds)."""
    prepare_process(SERVER_CPU)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    kind = parser.parse_args(argv).kind
    if kind == "sse":
        _serve_sse()
    elif kind == "ws":
        _serve_ws()
    elif kind == "grpc":
        asyncio.run(_serve_grpc())
    elif kind == "bare-sse":
        _uvicorn(_bare_sse_app(), lifespan="off", ws="none")
    elif kind == "bare-ws":
        import uvloop

        uvloop.run(_serve_bare_ws())
    else:
        asyncio.run(_serve_bare_grpc())
    return 0


if __name__ == "__main__":
    sys.exit(main())
