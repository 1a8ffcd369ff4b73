"""The servicers: ``FlowService`` over a ``FlowRuntime`` and ``BrickService`` over bricks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn

import grpc
import orjson
from google.protobuf.message import Message

from llmbrick import Brick, ErrorCode, FlowRuntime, InvalidRequest, LLMBrickError, RequestContext
from llmbrick.context import Headers
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES, Pump
from llmbrick.store import event_size
from llmbrick.stream import FlowStream, InvokeResult, ResumedStream

from ._generated import brick_pb2, brick_pb2_grpc, flow_pb2, flow_pb2_grpc
from .codec import (
    decode_request,
    encode_brick_info,
    encode_event,
    encode_flow_info,
    error_metadata,
    status_for,
)

__all__ = [
    "REQUEST_ID_KEY",
    "STREAM_ID_KEY",
    "BrickServicer",
    "FlowServicer",
    "create_brick_servicer",
    "create_servicer",
    "request_context",
]

_Context = grpc.aio.ServicerContext[Any, Any]
_ADAPTER_BUG = "internal error in the gRPC adapter; see the server log"
#: Initial metadata keys: the server's stream id (to resume it) and the request id.
STREAM_ID_KEY = "llmbrick-stream-id"
REQUEST_ID_KEY = "x-request-id"


def request_context(context: _Context, transport: str = "grpc") -> RequestContext:
    """The request context of a gRPC call: its metadata, peer and deadline."""
    metadata = context.invocation_metadata() or ()
    headers = Headers(
        (key, value if isinstance(value, str) else value.decode("latin-1"))
        for key, value in metadata
    )
    peer = context.peer() or None
    if peer is not None:
        # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000" -> the address part.
        peer = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    left = context.time_remaining()
    deadline = None if left is None else time.monotonic() + left
    return RequestContext(transport, headers=headers, peer=peer, deadline=deadline)


def _framed(event: Any) -> tuple[Any, int]:
    return event, event_size(event)


def _output_json(output: Any) -> tuple[str, int]:
    text: str = output.model_dump_json()
    return text, len(text)


async def _collect(stream: FlowStream) -> InvokeResult:
    """``stream.collect()`` in a task of its own: gRPC cancels the handler's task when the
    client goes away, and that cancel must not reach a flow its policy keeps running."""
    task = asyncio.ensure_future(stream.collect())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if stream.disconnect(task):
            await asyncio.wait([task])
        raise


async def _abort(
    context: _Context, error: Mapping[str, Any], request_id: str | None = None
) -> NoReturn:
    metadata = error_metadata(error)
    if request_id is not None:
        metadata = (*metadata, (REQUEST_ID_KEY, request_id))
    await context.abort(status_for(error["code"]), error["message"], metadata)


async def _announce(context: _Context, request_id: str, stream_id: str) -> None:
    """Initial metadata: the request id (echoed) and the stream id (to resume the stream)."""
    await context.send_initial_metadata(((REQUEST_ID_KEY, request_id), (STREAM_ID_KEY, stream_id)))


async def _write(context: _Context, message: Any) -> None:
    """``context.write``, where a write the C core refuses is the client's cancel.

    When a client cancels (or its deadline passes, or its connection drops), the C
    core ends the call at once, and gRPC tells the handler by cancelling its task
    once the loop gets to it. A write started in between fails with an
    ``ExecuteBatchError`` instead. It is the same event, so it ends the same way:
    as a cancellation (which gRPC logs at debug), not as a crash of the adapter.
    """
    try:
        await context.write(message)
    except grpc.aio.InternalError as exc:  # ExecuteBatchError: the call is already over
        raise asyncio.CancelledError from exc


class _TooLarge(Exception):
    """A response message larger than the server may send (the C core would fail the call)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a response of {size} bytes exceeds the gRPC message limit ({limit})")


def _check_size(response: Message, limit: int | None) -> None:
    # Checked here because the C core, given a message over grpc.max_send_message_length,
    # fails the call with RESOURCE_EXHAUSTED ("Sent message larger than max"): a status that
    # tells clients to retry later, and a failed write that looks like the client leaving.
    if limit is not None:
        size = response.ByteSize()
        if size > limit:
            raise _TooLarge(size, limit)


async def _abort_internal(context: _Context, logger: logging.Logger, what: str) -> NoReturn:
    logger.exception("gRPC %s failed", what)
    await _abort(context, {"code": ErrorCode.INTERNAL.value, "message": _ADAPTER_BUG})


class FlowServicer(flow_pb2_grpc.FlowServiceServicer):
    """``llmbrick.v1.FlowService`` for one runtime; see :func:`create_servicer`."""

    def __init__(
        self,
        runtime: FlowRuntime,
        *,
        max_batch: int,
        max_batch_bytes: int,
        max_message_bytes: int | None = None,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self.runtime = runtime
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_message_bytes = max_message_bytes
        self.max_buffer_bytes = max_buffer_bytes

    async def _start(self, request: flow_pb2.StreamRequest, context: _Context) -> FlowStream:
        try:
            payload = decode_request(request)
        except ValueError as exc:
            message = f"invalid request: {exc}"
            details = [{"loc": "extra_json", "message": str(exc), "type": "value_error"}]
            await _abort(context, InvalidRequest(message, details=details).to_info())
        call = request_context(context)
        try:
            stream = await self.runtime.open(None, payload, context=call)
        except LLMBrickError as exc:
            await _abort(context, exc.to_info(), call.request_id)
        await _announce(context, call.request_id, stream.id)
        return stream

    # A coroutine using context.write() rather than an async generator: gRPC cancels the
    # handler's task, so a client's cancel or deadline reaches the finally below at once.
    async def Stream(  # type: ignore[override]
        self, request: flow_pb2.StreamRequest, context: _Context
    ) -> None:
        """Stream a flow's events, every waiting event in one message."""
        await self._serve(await self._start(request, context), context)

    async def Resume(  # type: ignore[override]
        self, request: flow_pb2.ResumeRequest, context: _Context
    ) -> None:
        """Stream a kept stream's events after ``request.after``, then live to its end."""
        call = request_context(context)
        token = request.token if request.HasField("token") else None
        try:
            resumed = await self.runtime.resume(
                request.stream_id, request.after, context=call, token=token
            )
        except LLMBrickError as exc:
            await _abort(context, exc.to_info(), call.request_id)
        await _announce(context, call.request_id, resumed.id)
        await self._serve(resumed, context)

    async def Cancel(
        self, request: flow_pb2.CancelRequest, context: _Context
    ) -> flow_pb2.CancelResponse:
        """End a stream with a CANCELLED terminal event (its output is kept)."""
        call = request_context(context)
        token = request.token if request.HasField("token") else None
        try:
            await self.runtime.cancel(request.stream_id, context=call, token=token)
        except LLMBrickError as exc:
            await _abort(context, exc.to_info(), call.request_id)
        return flow_pb2.CancelResponse()

    async def _serve(self, stream: FlowStream | ResumedStream, context: _Context) -> None:
        pump: Pump[Any] = Pump(stream, _framed, self.max_buffer_bytes)
        last: Mapping[str, Any] | None = None
        try:
            while True:
                batch = await pump.take()
                if not batch:
                    break
                await self._send(context, batch)
                last = batch[-1]
                if last["type"] == "done" or last["type"] == "error":
                    break
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except _TooLarge as exc:
            await self._too_large(context, stream, exc)
        except Exception:
            await _abort_internal(context, self.runtime.logger, "Stream")
        finally:
            await pump.aclose()
        if last is not None and last["type"] == "error":
            await _abort(context, last["error"])

    async def _too_large(
        self, context: _Context, stream: FlowStream | ResumedStream, exc: _TooLarge
    ) -> NoReturn:
        name = stream.flow
        self.runtime.logger.error("gRPC stream %s of flow %r ended: %s", stream.id, name, exc)
        message = f"internal error in flow {name!r} (stream {stream.id}); see server log"
        await _abort(context, {"code": ErrorCode.INTERNAL.value, "message": message})

    async def _send(self, context: _Context, batch: list[Any]) -> None:
        budget = self.max_batch_bytes
        response = flow_pb2.StreamResponse()
        events = response.events
        size = 0
        count = self.max_batch
        for event in batch:
            grown = size + encode_event(event, events.add()).ByteSize()
            if (grown > budget or len(events) > count) and len(events) > 1:
                # Too big for one message: send what came before and start a new one with it.
                del events[-1]
                await self._flush(context, response, size)
                response = flow_pb2.StreamResponse()
                events = response.events
                grown = encode_event(event, events.add()).ByteSize()
            size = grown
        await self._flush(context, response, size)

    async def _flush(self, context: _Context, response: flow_pb2.StreamResponse, size: int) -> None:
        if size > self.max_batch_bytes:  # one event alone, of any size
            _check_size(response, self.max_message_bytes)
        await _write(context, response)

    async def Invoke(
        self, request: flow_pb2.StreamRequest, context: _Context
    ) -> flow_pb2.InvokeResponse:
        """Run a flow to its end; a failed flow ends the call with its status."""
        stream = await self._start(request, context)
        try:
            result = await _collect(stream)
            error = result["error"]
            if error is None:
                response = flow_pb2.InvokeResponse(text=result["text"])
                add = response.events.add
                for event in result["events"]:
                    encode_event(event, add())
                _check_size(response, self.max_message_bytes)
                return response
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except _TooLarge as exc:
            await self._too_large(context, stream, exc)
        except Exception:
            await _abort_internal(context, self.runtime.logger, "Invoke")
        finally:
            await stream.aclose()
        await _abort(context, error)

    async def ListFlows(
        self, request: flow_pb2.ListFlowsRequest, context: _Context
    ) -> flow_pb2.ListFlowsResponse:
        """Every registered flow with its request schema."""
        call = request_context(context)
        try:
            await self.runtime.authenticate(call)
        except LLMBrickError as exc:
            await _abort(context, exc.to_info(), call.request_id)
        try:
            flows = [encode_flow_info(item) for item in self.runtime.registry.describe()]
        except Exception:
            await _abort_internal(context, self.runtime.logger, "ListFlows")
        return flow_pb2.ListFlowsResponse(flows=flows)


class BrickServicer(brick_pb2_grpc.BrickServiceServicer):
    """``llmbrick.v1.BrickService`` for a set of bricks; see :func:`create_brick_servicer`."""

    def __init__(
        self,
        bricks: Mapping[str, Brick[Any, Any]],
        *,
        max_batch: int,
        debug: bool,
        logger: logging.Logger,
        max_message_bytes: int | None = None,
    ) -> None:
        self.bricks = bricks
        self.max_batch = max_batch
        self.debug = debug
        self.logger = logger
        self.max_message_bytes = max_message_bytes

    def _find(self, name: str) -> Brick[Any, Any]:
        if not name and len(self.bricks) == 1:
            return next(iter(self.bricks.values()))
        brick = self.bricks.get(name)
        if brick is None:
            known = ", ".join(repr(n) for n in self.bricks) or "none"
            what = f"no brick named {name!r}" if name else "a brick name is required"
            raise LLMBrickError(
                f"{what}; served bricks: {known}", code=ErrorCode.NOT_FOUND, details={"brick": name}
            )
        return brick

    def _input(self, brick: Brick[Any, Any], text: str) -> Any:
        try:
            value = orjson.loads(text or "{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"invalid input for brick {brick.name!r}: input_json: malformed JSON: {exc}",
                details=[{"loc": "input_json", "message": str(exc), "type": "json_invalid"}],
            ) from None
        return brick.to_input(value)

    async def _fail(self, context: _Context, exc: Exception, brick: str) -> NoReturn:
        if isinstance(exc, (grpc.aio.AbortError, grpc.aio.UsageError)):
            raise exc
        if isinstance(exc, LLMBrickError):
            if exc.code is ErrorCode.INTERNAL and not self.debug:
                self.logger.error("brick %s failed: %s", brick, exc.message)
            await _abort(context, exc.to_info())
        self.logger.error("brick %s crashed", brick, exc_info=exc)
        message = (
            f"{type(exc).__name__}: {exc}"
            if self.debug
            else f"internal error in brick {brick!r}; see the server log"
        )
        await _abort(context, {"code": ErrorCode.INTERNAL.value, "message": message})

    async def Info(
        self, request: brick_pb2.BrickInfoRequest, context: _Context
    ) -> brick_pb2.BrickInfo:
        """A brick's kind, mode, model names and JSON schemas."""
        try:
            return encode_brick_info(self._find(request.name).info())
        except Exception as exc:
            await self._fail(context, exc, request.name)

    async def ListBricks(
        self, request: brick_pb2.ListBricksRequest, context: _Context
    ) -> brick_pb2.ListBricksResponse:
        """Every served brick's info."""
        try:
            infos = [encode_brick_info(brick.info()) for brick in self.bricks.values()]
        except Exception as exc:
            await self._fail(context, exc, "*")
        return brick_pb2.ListBricksResponse(bricks=infos)

    async def Unary(
        self, request: brick_pb2.BrickRequest, context: _Context
    ) -> brick_pb2.BrickResponse:
        """Run a unary brick on one input."""
        try:
            brick = self._find(request.name)
            if brick.mode == "stream":
                raise LLMBrickError(
                    f"brick {brick.name!r} streams: call BrickService/Stream",
                    code=ErrorCode.FAILED_PRECONDITION,
                )
            output = await brick.run(self._input(brick, request.input_json))
            response = brick_pb2.BrickResponse(output_json=output.model_dump_json())
            _check_size(response, self.max_message_bytes)
            return response
        except Exception as exc:
            await self._fail(context, exc, request.name)

    async def Stream(  # type: ignore[override]  # write() style, as FlowServicer.Stream
        self, request: brick_pb2.BrickRequest, context: _Context
    ) -> None:
        """Run a brick and stream its outputs, every waiting output in one message."""
        try:
            brick = self._find(request.name)
            outputs = brick.stream(self._input(brick, request.input_json))
        except Exception as exc:
            await self._fail(context, exc, request.name)
        pump: Pump[str] = Pump(outputs, _output_json, DEFAULT_BUFFER_BYTES)
        try:
            while batch := await pump.take():
                response = brick_pb2.BrickStreamResponse()
                response.outputs_json.extend(batch)
                _check_size(response, self.max_message_bytes)
                await _write(context, response)
        except Exception as exc:
            await self._fail(context, exc, brick.name)
        finally:
            await pump.aclose()


def create_servicer(
    runtime: FlowRuntime,
    *,
    max_batch: int = 64,
    max_batch_bytes: int = 1 << 20,
    max_message_bytes: int | None = None,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> FlowServicer:
    """The ``FlowService`` servicer for ``runtime``, to add to any ``grpc.aio`` server.

    Args:
        runtime: the runtime shared with every other adapter.
        max_batch: events one response may carry.
        max_batch_bytes: encoded bytes after which a response is sent and a new one
            begun; keep it under the clients' maximum receive size.
        max_message_bytes: the server's ``grpc.max_send_message_length``: a response
            over it (one huge event) ends the call with INTERNAL and an ERROR line
            naming the flow, instead of gRPC's RESOURCE_EXHAUSTED. ``None``: unchecked.
        max_buffer_bytes: event bytes kept ready per stream while the client reads
            slower than the flow produces; the flow waits beyond.
    """
    return FlowServicer(
        runtime,
        max_batch=max_batch,
        max_batch_bytes=max_batch_bytes,
        max_message_bytes=max_message_bytes,
        max_buffer_bytes=max_buffer_bytes,
    )


def create_brick_servicer(
    bricks: Mapping[str, Brick[Any, Any]],
    *,
    max_batch: int = 64,
    debug: bool = False,
    logger: logging.Logger | None = None,
    max_message_bytes: int | None = None,
) -> BrickServicer:
    """The ``BrickService`` servicer for ``bricks`` (name -> brick; may grow later).

    Args:
        bricks: the bricks to serve, by name.
        max_batch: outputs one response may carry.
        debug: send internal exception text to clients (never in production).
        logger: where brick crashes go.
        max_message_bytes: as :func:`create_servicer`; a response over it is a crash.
    """
    return BrickServicer(
        bricks,
        max_batch=max_batch,
        debug=debug,
        logger=logger or logging.getLogger("llmbrick"),
        max_message_bytes=max_message_bytes,
    )
