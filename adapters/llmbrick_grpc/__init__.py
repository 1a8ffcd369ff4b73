"""llmbrick over gRPC: ``FlowService`` and ``BrickService`` on ``grpc.aio``; client; RemoteBrick."""

from __future__ import annotations

try:
    import google.protobuf  # noqa: F401
    import grpc  # noqa: F401
    import grpc_health.v1.health  # type: ignore[import-untyped]  # noqa: F401
    import grpc_reflection.v1alpha.reflection  # type: ignore[import-untyped]  # noqa: F401
    import orjson  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick_grpc needs the 'grpc' extra ({exc.name} is missing): "
        "pip install '.[grpc]' from a checkout of llmbrick, "
        "or pip install 'llmbrick[grpc] @ <wheel or git URL>'"
    ) from exc

from .client import GrpcClient
from .codec import code_for, decode_event, decode_request, encode_event, encode_request, status_for
from .remote import RemoteBrick
from .server import GrpcServer, add_services, server_options
from .services import create_brick_servicer, create_servicer

__all__ = [
    "GrpcClient",
    "GrpcServer",
    "RemoteBrick",
    "add_services",
    "code_for",
    "create_brick_servicer",
    "create_servicer",
    "decode_event",
    "decode_request",
    "encode_event",
    "encode_request",
    "server_options",
    "status_for",
]
