"""Server reflection: a client with no generated code discovers and calls FlowService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
    ProtoReflectionDescriptorDatabase,
)

from llmbrick import Pipeline
from llmbrick.bricks import EchoLLM, KeywordGuard
from llmbrick_grpc import GrpcServer
from tests.adapters.grpc_support import running
from tests.support import TIMEOUT


def discover(address: str) -> tuple[list[str], dict[str, Any]]:
    """Blocking reflection calls (run in a thread): service names and the Stream method's types."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("llmbrick.v1.FlowService").methods_by_name["Stream"]
        invoke = pool.FindServiceByName("llmbrick.v1.FlowService").methods_by_name["Invoke"]
        return services, {
            "request": message_factory.GetMessageClass(method.input_type),
            "response": message_factory.GetMessageClass(method.output_type),
            "invoke_response": message_factory.GetMessageClass(invoke.output_type),
            "streaming": method.server_streaming,
        }


async def test_a_stream_called_through_reflection_alone() -> None:
    server = GrpcServer(Pipeline().add_brick(KeywordGuard(["bomb"])).add_brick(EchoLLM()))
    async with running(server) as address:
        services, types = await asyncio.to_thread(discover, address)
        assert services == [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "llmbrick.v1.BrickService",
            "llmbrick.v1.FlowService",
        ]
        assert types["streaming"] is True
        # The request is built from JSON, as grpcurl -d '{...}' would.
        request = json_format.ParseDict(
            {
                "flow": "default",
                "messages": [{"role": "user", "content": "via reflection"}],
                "maxTokens": 8,
                "extraJson": '{"metadata": {"n": 1}}',
            },
            types["request"](),
        )
        async with grpc.aio.insecure_channel(address) as channel:
            call: Any = channel.unary_stream(
                "/llmbrick.v1.FlowService/Stream",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=types["response"].FromString,
            )(request, timeout=TIMEOUT)
            events = await _events(call)
            invoke: Any = channel.unary_unary(
                "/llmbrick.v1.FlowService/Invoke",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=types["invoke_response"].FromString,
            )
            reply = await invoke(request, timeout=TIMEOUT)
    assert [e.get("text") for e in events] == ["via ", "reflection", None]
    assert events[-1] == {"type": "done", "id": "3", "progress": "PROGRESS_DONE"}
    assert reply.text == "via reflection"


async def _events(call: AsyncIterator[Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for response in call:
        for event in json_format.MessageToDict(response)["events"]:
            extra = orjson.loads(event.pop("extraJson", "{}"))
            events.append({**event, **extra})
    return events
