"""``RemoteBrick``: a brick served by another process, called over gRPC inside any Pipeline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import grpc
from pydantic import BaseModel, ValidationError

import llmbrick
import llmbrick.bricks
from llmbrick import (
    Brick,
    CommonBrick,
    ComposeBrick,
    Event,
    GuardBrick,
    IntentionBrick,
    LLMBrick,
    LLMBrickError,
    PipelineTypeError,
    RectifyBrick,
    RetrievalBrick,
    TranslateBrick,
)

from ._generated import brick_pb2, brick_pb2_grpc
from ._options import merge_options
from .client import channel_options, open_channel
from .codec import code_for, decode_brick_info, error_from_metadata
from .errors import error_info, exception_for

__all__ = ["RemoteBrick"]

_log = logging.getLogger("llmbrick.grpc")

# How each built-in kind takes part in a pipeline (what it accepts, how it merges).
_KINDS: dict[str, type[Brick[Any, Any]]] = {
    "llm": LLMBrick,
    "guard": GuardBrick,
    "intention": IntentionBrick,
    "rectify": RectifyBrick,
    "translate": TranslateBrick,
    "retrieval": RetrievalBrick,
    "compose": ComposeBrick,
    "common": CommonBrick,
}


def _fetch_info(
    address: str,
    name: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
    metadata: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    merged = merge_options(channel_options(), options)
    channel = (
        grpc.insecure_channel(address, options=merged)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=merged)
    )
    with channel:
        stub = brick_pb2_grpc.BrickServiceStub(channel)
        try:
            # wait_for_ready: a server that is still starting gets until the timeout.
            reply = stub.Info(
                brick_pb2.BrickInfoRequest(name=name),
                timeout=timeout,
                metadata=tuple(metadata),
                wait_for_ready=True,
            )
        except grpc.RpcError as exc:
            raise _info_error(exc, address, name) from None
    return decode_brick_info(reply)


def _info_error(exc: grpc.RpcError, address: str, name: str) -> LLMBrickError:
    info = error_info(exc)
    hint = ""
    if info["code"] == "DEADLINE_EXCEEDED" and _in_event_loop():
        hint = (
            " (a server running in this same event loop cannot answer a blocking call:"
            " use 'await RemoteBrick.connect(...)')"
        )
    return exception_for(
        {
            "code": info["code"],
            "message": f"cannot get info of remote brick {name!r} at {address}: "
            f"{info['message']}{hint}",
        }
    )


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _local_model(given: type[BaseModel] | None, remote_name: str, role: str) -> type[BaseModel]:
    if given is not None:
        return given
    # The kinds' models live in llmbrick.bricks; a model a flow author declares may be
    # exported from the top level too.
    model = getattr(llmbrick.bricks, remote_name, None) or getattr(llmbrick, remote_name, None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    raise PipelineTypeError(
        f"the remote brick's {role} model {remote_name} is not a built-in llmbrick model; "
        f"pass {role}_model= with a local model of the same schema"
    )


def _check_schema(
    local: type[BaseModel], remote_name: str, remote_schema: Any, role: str, brick: str
) -> None:
    if local.model_json_schema() != remote_schema:
        raise PipelineTypeError(
            f"remote brick {brick!r}: its {role} model {remote_name} (remote) and "
            f"{local.__name__} (local) have different JSON schemas"
        )


class RemoteBrick(Brick[Any, Any]):
    """A brick served by a :class:`~llmbrick_grpc.GrpcServer` elsewhere, usable in any Pipeline.

    Construction asks the server for the brick's kind, mode and models (a short
    blocking ``Info`` call; inside a running event loop whose own server you
    call, use :meth:`connect`). The local input/output models are the given
    ones or the built-in llmbrick models of the same name, and their JSON
    schemas must equal the remote ones. The brick then behaves in a pipeline
    like its kind (a remote guard stops the stream, a remote LLM streams
    text), and its calls go over one ``grpc.aio`` channel, closed by :meth:`aclose`.

    Args:
        address: the server's ``host:port``.
        name: the brick's name on that server.
        input_model, output_model: local models (default: built-in ones by name).
        timeout: deadline in seconds for each call (``None``: none).
        info_timeout: seconds the ``Info`` call may take, waiting for a starting server.
        info: the remote ``Brick.info()`` if already known (then no call is made).
        credentials: TLS channel credentials; ``None`` connects in plaintext.
        metadata: metadata sent with every call.
        options: extra channel arguments.

    Raises:
        PipelineTypeError: a local model is missing or its schema differs from the remote one.
        LLMBrickError: the server cannot be reached or has no such brick.
    """

    def __init__(
        self,
        address: str,
        name: str,
        *,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        timeout: float | None = None,
        info_timeout: float = 5.0,
        info: Mapping[str, Any] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        remote = (
            dict(info)
            if info is not None
            else _fetch_info(address, name, info_timeout, credentials, options, metadata)
        )
        local_in = _local_model(input_model, remote["inputModel"], "input")
        local_out = _local_model(output_model, remote["outputModel"], "output")
        _check_schema(local_in, remote["inputModel"], remote["inputSchema"], "input", name)
        _check_schema(local_out, remote["outputModel"], remote["outputSchema"], "output", name)
        super().__init__(
            name=name,
            description=remote.get("description", ""),
            version=remote.get("version"),
            input_model=local_in,
            output_model=local_out,
        )
        # The kind is per instance here (a class constant elsewhere), so info() reports it.
        self.__dict__["kind"] = remote["kind"]
        self.address = address
        self.remote_info = remote
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self._credentials = credentials
        self._options = tuple(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: brick_pb2_grpc.BrickServiceAsyncStub | None = None
        shape = _KINDS.get(remote["kind"])
        self._shape = (
            shape(name=name, input_model=local_in, output_model=local_out)
            if shape is not None
            else None
        )
        if remote["mode"] == "stream":
            self._stream = self._remote_stream
        else:
            self._unary = self._remote_unary

    @classmethod
    async def connect(
        cls,
        address: str,
        name: str,
        *,
        info_timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        **kwargs: Any,
    ) -> RemoteBrick:
        """Like the constructor, but the ``Info`` call does not block the event loop.

        Raises:
            PipelineTypeError, LLMBrickError: as the constructor.
        """
        channel = open_channel(address, credentials=credentials, options=options)
        try:
            stub = brick_pb2_grpc.BrickServiceStub(channel)
            try:
                reply = await stub.Info(
                    brick_pb2.BrickInfoRequest(name=name),
                    timeout=info_timeout,
                    metadata=metadata,
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as exc:
                raise _info_error(exc, address, name) from None
            brick = cls(
                address,
                name,
                info=decode_brick_info(reply),
                credentials=credentials,
                metadata=metadata,
                options=options,
                **kwargs,
            )
        except BaseException:
            await channel.close()
            raise
        brick._channel = channel
        brick._stub = stub
        return brick

    def __repr__(self) -> str:
        return f"<RemoteBrick {self.name!r} {self.kind} at {self.address}>"

    # -- pipeline behaviour: that of the remote brick's kind ------------------------------

    def accepts(self, source: type[BaseModel]) -> bool:
        if self._shape is not None:
            return self._shape.accepts(source)
        return super().accepts(source)

    def output_for(self, source: type[BaseModel]) -> type[BaseModel]:
        if self._shape is not None:
            return self._shape.output_for(source)
        return super().output_for(source)

    def to_input(self, value: Any) -> Any:
        if self._shape is not None:
            return self._shape.to_input(value)
        return super().to_input(value)

    def merge(self, value: BaseModel, output: Any) -> BaseModel:
        if self._shape is not None:
            return self._shape.merge(value, output)
        return super().merge(value, output)

    def events_for(self, output: Any) -> list[Event]:
        if self._shape is not None:
            return self._shape.events_for(output)
        return super().events_for(output)

    # -- calls ----------------------------------------------------------------------------

    def _bricks(self) -> brick_pb2_grpc.BrickServiceAsyncStub:
        if self._stub is None:
            self._channel = open_channel(
                self.address, credentials=self._credentials, options=self._options
            )
            self._stub = brick_pb2_grpc.BrickServiceStub(self._channel)
        assert self._stub is not None
        return self._stub

    def _request(self, value: BaseModel) -> brick_pb2.BrickRequest:
        return brick_pb2.BrickRequest(name=self.name, input_json=value.model_dump_json())

    def _output(self, text: str) -> BaseModel:
        try:
            return self.output_model.model_validate_json(text)
        except ValidationError:
            raise LLMBrickError(
                f"remote brick {self.name!r} sent an output that is not a "
                f"{self.output_model.__name__}"
            ) from None

    def _error(self, exc: grpc.aio.AioRpcError) -> LLMBrickError:
        info = error_from_metadata(exc.trailing_metadata())
        if info is not None:
            return exception_for(info)
        # No llmbrick trailer: a transport failure, whose text is for the log only.
        _log.warning("remote brick %s at %s: %s", self.name, self.address, exc.details())
        status = exc.code()
        return exception_for(
            {
                "code": code_for(status),
                "message": f"remote brick {self.name!r} failed: {status.name}",
            }
        )

    async def _remote_unary(self, request: BaseModel) -> BaseModel:
        try:
            reply = await self._bricks().Unary(
                self._request(request), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        return self._output(reply.output_json)

    async def _remote_stream(self, request: BaseModel) -> AsyncGenerator[BaseModel]:
        call = self._bricks().Stream(
            self._request(request), timeout=self.timeout, metadata=self.metadata
        )
        try:
            async for reply in call:
                for text in reply.outputs_json:
                    yield self._output(text)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    async def aclose(self) -> None:
        """Close the channel."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
