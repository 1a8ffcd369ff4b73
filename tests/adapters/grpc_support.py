"""Helpers for the gRPC adapter tests: servers on port 0, raw calls, flows that hold."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson

from llmbrick import ChatRequest, ErrorInfo, Event
from llmbrick_grpc import GrpcServer, decode_event, encode_request
from llmbrick_grpc.codec import error_from_metadata
from llmbrick_grpc.stubs import flow_pb2_grpc
from tests.support import TIMEOUT

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello world"}]}


def chat(text: str, flow: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat request dict, as an SSE client would POST it."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if flow is not None:
        body["flow"] = flow
    return body


def normalised(value: Any) -> Any:
    """``value`` with stream numbers ("stream s3") blanked: they count streams per runtime."""
    return orjson.loads(re.sub(rb"stream [A-Za-z0-9_-]{16}", b"stream ?", orjson.dumps(value)))


@dataclass
class Hold:
    """A flow that says it started, then waits for ``release`` (or forever); records its end."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    silent: bool = False

    async def flow(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Register this one (``registry.register("hold", hold.flow)``)."""
        try:
            self.started.set()
            if not self.silent:
                yield {"type": "text", "text": "started"}
            await self.release.wait()
            yield {"type": "text", "text": "released"}
        finally:
            self.finished.set()


@asynccontextmanager
async def running(server: GrpcServer, grace: float = 0.0) -> AsyncIterator[str]:
    """Start ``server`` on 127.0.0.1:0, yield ``host:port``, stop it afterwards."""
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace)


@dataclass
class Raw:
    """What a raw ``FlowService/Stream`` call delivered: events, events per message, status."""

    events: list[Event]
    sizes: list[int]
    status: grpc.StatusCode
    details: str | None
    error: ErrorInfo | None


async def raw_stream(channel: grpc.aio.Channel, request: dict[str, Any], **kwargs: Any) -> Raw:
    """Call ``Stream`` with the generated stub and record everything, the status included."""
    stub = flow_pb2_grpc.FlowServiceStub(channel)
    call = stub.Stream(encode_request(request), timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)
    events: list[Event] = []
    sizes: list[int] = []
    try:
        async for response in call:
            sizes.append(len(response.events))
            events.extend(decode_event(message) for message in response.events)
    except grpc.aio.AioRpcError:
        pass  # the status is read below, as for a call that ended well
    return Raw(
        events,
        sizes,
        await call.code(),
        await call.details(),
        error_from_metadata(await call.trailing_metadata()),
    )


@contextmanager
def threaded_server(target: object) -> Iterator[str]:
    """Run ``target`` (a GrpcServer, or what to make one of) on its own event loop in a thread.

    Yields ``host:port``.

    A blocking call (``RemoteBrick(...)`` at assembly time) cannot be answered by a
    server on the caller's own loop, so such tests put the server here.
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        server = target if isinstance(target, GrpcServer) else GrpcServer(target)
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop = asyncio.Event()
        try:
            state["port"] = await server.start("127.0.0.1", 0)
        finally:
            ready.set()
        await stop.wait()
        await server.stop(0)

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the test below
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, name="grpc-test-server", daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT), "the threaded server did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield f"127.0.0.1:{state['port']}"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the threaded server did not stop"
        if "error" in state:
            raise state["error"]
