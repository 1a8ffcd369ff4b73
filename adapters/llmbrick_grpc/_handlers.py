"""Registering our servicers so that bytes which are not a request get INVALID_ARGUMENT.

grpc.aio parses a request before the handler runs. With the generated
``add_*Servicer_to_server`` functions the parser is the message class's
``FromString``: undecodable bytes raise ``DecodeError`` inside gRPC, which answers
``UNKNOWN: Unexpected <class 'google.protobuf.message.DecodeError'>: ...`` and logs
a servicer crash at ERROR for what is only a bad request. Here each method gets a
parser that turns undecodable bytes into a marker, and a guard in front of the
servicer method that answers the marker with INVALID_ARGUMENT in our own words.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from llmbrick import InvalidRequest

from .codec import error_metadata, status_for

__all__ = ["register_servicer"]

_Behaviour = Callable[[Any, Any], Awaitable[Any]]


class _Undecodable:
    """Stands for a request whose bytes are not a valid ``type_name`` message."""

    __slots__ = ("error",)

    def __init__(self, type_name: str) -> None:
        problem = f"not a valid {type_name} message (protobuf wire format)"
        self.error = InvalidRequest(
            f"invalid request: (root): {problem}",
            details=[{"loc": "(root)", "message": problem, "type": "protobuf_invalid"}],
        ).to_info()


def _parser(message_class: type[Message]) -> Callable[[bytes], Message | _Undecodable]:
    parse = message_class.FromString
    undecodable = _Undecodable(message_class.DESCRIPTOR.full_name)

    def deserialize(data: bytes) -> Message | _Undecodable:
        try:
            return parse(data)
        except DecodeError:  # garbage, truncation, invalid UTF-8 in a string field
            return undecodable

    return deserialize


def _guarded(behaviour: _Behaviour) -> _Behaviour:
    # A coroutine function either way, so gRPC keeps using the write() API for streams.
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            error = request.error
            await context.abort(status_for(error["code"]), error["message"], error_metadata(error))
        return await behaviour(request, context)

    return handle


def _handler(method: MethodDescriptor, servicer: object) -> grpc.RpcMethodHandler[Any, Any]:
    implementation = getattr(servicer, method.name)
    if method.client_streaming or not inspect.iscoroutinefunction(implementation):
        # The guard awaits the implementation: an async generator would need another one.
        raise TypeError(f"{method.full_name}: only coroutine methods taking one request")
    behaviour = _guarded(implementation)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    make = (
        grpc.unary_stream_rpc_method_handler
        if method.server_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(
        behaviour,
        request_deserializer=_parser(request_class),
        response_serializer=response_class.SerializeToString,
    )


def register_servicer(
    server: grpc.aio.Server, service: ServiceDescriptor, servicer: object
) -> None:
    """Serve every method of ``service`` from ``servicer`` (what the generated code does).

    As registered methods, like the generated code: gRPC's C core then routes calls
    to them by path, without a lookup per call in Python.
    """
    handlers = {method.name: _handler(method, servicer) for method in service.methods}
    server.add_registered_method_handlers(service.full_name, handlers)
