"""Server entry points: ``python -m benchmarks.servers KIND`` prints ``READY <port>`` and serves.

Every server streams the same flow: ``count`` events ``{"type": "text", "text": "tok"}``
stamped with ``id`` and ``progress``, then a ``done`` event, on the schedule of
:func:`benchmarks.common.bench_schedule` (modes fast, paced, idle, burst). The request
carries the parameters as ``metadata.bench = {"count", "mode", "interval", "burst"}``
(SSE body, WebSocket ``start`` request, gRPC ``extra_json``). Kinds:

- ``sse``, ``ws``, ``grpc``: llmbrick's adapters as shipped (``SSEServer``,
  ``WebSocketServer`` with its own uvicorn options, ``GrpcServer``) serving the registry
  of ``benchmarks/app.py``.
- ``bare-sse``: a bare ASGI app on the same uvicorn (uvloop + httptools) writing
  hand-framed SSE bytes, the event dict encoded with orjson, one ASGI send per event.
- ``bare-ws``: ``websockets.asyncio.server.serve`` (compression off) sending the frames
  of llmbrick's WebSocket protocol, one frame per event.
- ``bare-grpc``: a bare ``grpc.aio`` servicer (no options) yielding one
  ``StreamResponse`` with one ``Event`` per event, from llmbrick's generated messages.
- ``bare-grpc-batch``: the same servicer batching as ours does: a producer task fills a
  buffer (at most 64 events) while the servicer writes, and each ``StreamResponse``
  carries every event waiting, so the comparison with ours is not one of batching.

Variants of ours, each changing one thing of ``sse`` or ``grpc`` (the same adapter with
its defaults, on a ``FlowRuntime`` of the same registry built here):

- ``sse-memstore``, ``grpc-memstore``: ``FlowRuntime(registry, store=MemoryStore())``:
  every stream is kept (its events appended to a log the client reads).
- ``sse-redis``, ``grpc-redis``: ``store=RedisStore.from_url(--redis URL)``, opened
  before the server listens, as the gateway does (run.py starts the redis-server).
- ``sse-guarded``, ``grpc-guarded``: ``authenticator=ApiKeyAuth([API_KEY])`` and the
  Prometheus observer of ``llmbrick_telemetry`` (``install(runtime, metrics=True)``;
  counted, not scraped: ``/metrics`` is not served).
- ``openai``: the ``sse`` server itself (``SSEServer`` mounts the OpenAI route under
  ``/v1``): the load client calls ``POST /v1/chat/completions`` instead.

The bare servers are floors, not equals: none of them watches for a client that went
away mid-flow, sends keepalive pings of its own or limits anything.

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

from benchmarks.common import (
    API_KEY,
    IDLE,
    READY,
    SERVER_CPU,
    BenchParams,
    bench_params,
    bench_schedule,
    prepare_process,
)
from llmbrick.serving import settle_heap

__all__ = ["KINDS", "main"]

_VARIANTS = (
    "sse-memstore",
    "sse-redis",
    "sse-guarded",
    "openai",
    "grpc-memstore",
    "grpc-redis",
    "grpc-guarded",
)
KINDS = ("sse", "ws", "grpc", "bare-sse", "bare-ws", "bare-grpc", "bare-grpc-batch", *_VARIANTS)
_BACKLOG = 4096
#: Events per message at most, as ``GrpcServer``'s ``max_batch``.
_GRPC_BATCH = 64


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


async def _events(params: BenchParams) -> AsyncIterator[dict[str, Any]]:
    """The flow of the bare servers; the same loop as our flow in ``benchmarks/app.py``."""
    loop = asyncio.get_running_loop()
    for pause in bench_schedule(params, loop.time):
        if pause is not None:
            await asyncio.sleep(pause)
        yield {"type": "text", "text": "tok"}
    if params.mode == IDLE:
        await loop.create_future()  # until the client leaves


def _flows() -> Any:
    from benchmarks.app import build_registry

    return build_registry()


def _target(kind: str, redis_url: str | None) -> Any:
    """What ``kind`` serves: the registry (``sse``, ``grpc``: as shipped) or a variant's runtime.

    Raises:
        SystemExit: a ``*-redis`` kind without ``--redis``.
    """
    variant = kind.partition("-")[2]
    if variant not in ("memstore", "redis", "guarded"):
        return _flows()  # the plain servers and openai: the adapter makes the runtime
    from llmbrick import ApiKeyAuth, FlowRuntime, MemoryStore

    if variant == "memstore":
        return FlowRuntime(_flows(), store=MemoryStore())
    if variant == "redis":
        if not redis_url:
            raise SystemExit(f"{kind} needs --redis redis://HOST:PORT/DB")
        from llmbrick_redis import RedisStore

        return FlowRuntime(_flows(), store=RedisStore.from_url(redis_url))
    from llmbrick_telemetry import install

    runtime = FlowRuntime(_flows(), authenticator=ApiKeyAuth([API_KEY]))
    install(runtime, metrics=True)
    return runtime


async def _open_store(runtime: Any) -> None:
    """Open the runtime's store, if any, as the gateway does before it serves."""
    if runtime.store is not None:
        await runtime.store.open()


def _uvicorn(
    app: Any, runtime: Any = None, *, ours: bool = True, http: Any = None, **options: Any
) -> None:
    """Serve ``app`` on uvicorn; ``runtime``: open its store first, in the server's loop;
    ``ours``: as llmbrick's servers run (their HTTP protocol with the limits of ``http``, the
    garbage collector set up), else uvicorn's own httptools protocol, as a bare app would."""
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
    if ours:
        from llmbrick_http import HttpSettings, uvicorn_config

        # No cap on open connections: idle10000 opens exactly the default cap's number.
        limits = (http or HttpSettings()).with_options(max_connections=None)
        del settings["http"]
        config = uvicorn_config(app, limits, **{"lifespan": "on", **settings})
    else:
        config = uvicorn.Config(app, **settings)
    server = uvicorn.Server(config)

    async def serve() -> None:
        if runtime is not None:
            await _open_store(runtime)
        await server.serve(sockets=[sock])

    if ours:
        settle_heap()  # as our servers' run() does; a bare app is left as Python sets it
    _announce(sock.getsockname()[1])  # connections wait in the backlog until it serves
    uvloop.run(serve())


def _serve_sse(target: Any) -> None:
    from llmbrick_sse import SSEServer

    server = SSEServer(target)
    _uvicorn(server.app, server.runtime, http=server.http, ws="none")


def _serve_ws() -> None:
    from llmbrick_websocket import WebSocketServer

    server = WebSocketServer(_flows())
    _uvicorn(server.app, http=server.http, **server.uvicorn_options())


async def _serve_grpc(target: Any) -> None:
    from llmbrick_grpc import GrpcServer

    server = GrpcServer(target)
    await _open_store(server.runtime)
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
        params = bench_params(request["metadata"]["bench"])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        number = 0
        async for event in _events(params):
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
            params = bench_params(frame["request"]["metadata"]["bench"])
            number = 0
            async for event in _events(params):
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


class _Batcher:
    """Runs a producer in its own task; :meth:`take` returns everything it produced so far.

    The bare counterpart of ``GrpcServer``'s coalescing: while the servicer awaits a
    write, the flow goes on; the next message carries all that is waiting, at most
    ``limit`` events (the producer waits for room beyond that), and nothing waits
    for more events than are ready.
    """

    def __init__(self, source: AsyncIterator[Any], limit: int) -> None:
        self.items: list[Any] = []
        self.limit = limit
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.task = asyncio.create_task(self._fill(source))
        self.task.add_done_callback(lambda _: self.ready.set())

    async def _fill(self, source: AsyncIterator[Any]) -> None:
        async for item in source:
            self.items.append(item)
            self.ready.set()
            if len(self.items) >= self.limit:
                self.room.clear()
                await self.room.wait()

    async def take(self) -> list[Any]:
        """Wait for one item at least, then return every waiting one (none: the end)."""
        while not self.items and not self.task.done():
            self.ready.clear()
            await self.ready.wait()
        batch, self.items = self.items, []
        self.room.set()
        if not batch and not self.task.cancelled() and self.task.exception() is not None:
            raise RuntimeError("the producer failed") from self.task.exception()
        return batch

    async def close(self) -> None:
        """Stop the producer (the client went away or the stream ended)."""
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])


async def _serve_bare_grpc(batch: bool) -> None:
    import grpc
    import orjson

    from llmbrick_grpc._generated import event_pb2, flow_pb2, flow_pb2_grpc

    in_progress = event_pb2.PROGRESS_IN_PROGRESS

    async def produce(params: BenchParams) -> AsyncIterator[Any]:
        number = 0
        async for event in _events(params):
            number += 1
            yield event_pb2.Event(
                type=event["type"], text=event["text"], id=str(number), progress=in_progress
            )
        yield event_pb2.Event(type="done", id=str(number + 1), progress=event_pb2.PROGRESS_DONE)

    class Servicer(flow_pb2_grpc.FlowServiceServicer):
        async def Invoke(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

        async def ListFlows(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server only streams")

        async def Resume(self, request: Any, context: Any) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server keeps no streams")
            yield  # never reached (abort raises); makes this the streaming method it overrides

        async def Cancel(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server keeps no streams")

        async def Stream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            params = bench_params(orjson.loads(request.extra_json)["metadata"]["bench"])
            if not batch:  # one message per event, built where it is sent
                number = 0
                async for event in _events(params):
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
                return
            batcher = _Batcher(produce(params), _GRPC_BATCH)
            try:
                while events := await batcher.take():
                    yield flow_pb2.StreamResponse(events=events)
            finally:
                await batcher.close()

    server = grpc.aio.server()
    flow_pb2_grpc.add_FlowServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(port)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    """Start one server (see the module docstring for the kinds)."""
    # run.py already pinned this process before it started; this covers a server started
    # by hand, and agrees with run.py (the single-process servers always get CPU 0).
    prepare_process(SERVER_CPU)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--redis", help="the Redis URL of the *-redis kinds' store")
    options = parser.parse_args(argv)
    kind = options.kind
    if kind == "ws":
        _serve_ws()
    elif kind in ("sse", "openai") or kind.startswith("sse-"):
        _serve_sse(_target(kind, options.redis))
    elif kind == "grpc" or kind.startswith("grpc-"):
        target = _target(kind, options.redis)
        settle_heap()  # as GrpcServer.run() does
        asyncio.run(_serve_grpc(target))
    elif kind == "bare-sse":
        _uvicorn(_bare_sse_app(), ours=False, lifespan="off", ws="none")
    elif kind == "bare-ws":
        import uvloop

        uvloop.run(_serve_bare_ws())
    else:
        asyncio.run(_serve_bare_grpc(batch=kind == "bare-grpc-batch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
