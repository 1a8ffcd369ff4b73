"""llmbrick: serve LLM flows over SSE, WebSocket and gRPC from one runtime.

This package is the transport-free core. It never imports a web framework,
gRPC, protobuf or a WebSocket library: flows yield plain event dicts, the
``FlowRuntime`` applies the rules every transport shares, and the adapters
(``llmbrick_sse``, ``llmbrick_websocket``, ``llmbrick_grpc``) turn those dicts
into bytes on the wire.

The top level holds what a flow author needs: the runtime and registry, the
request and event vocabulary, the errors, ``Pipeline`` and the brick kinds,
and the seams a deployment configures (context, keys, limits, a store, an
observer). The rest lives in submodules, each with its ``__all__``:

- ``llmbrick.bricks``: the bricks' input and output models (``TextChunk``,
  ``LLMRequest``...), the demo bricks ``EchoLLM`` and ``KeywordGuard``, ``BrickEvent``.
- ``llmbrick.stream``: ``FlowStream`` and ``ResumedStream`` (what adapters iterate),
  ``InvokeResult``, ``collect_events``.
- ``llmbrick.store``: ``StreamStore`` and its log, for writing another store.
- ``llmbrick.context``, ``llmbrick.auth``, ``llmbrick.observe``: the rest of those seams.
- ``llmbrick.client``: the base every transport's client shares.
- ``llmbrick.flow_control``: the byte-bounded buffers adapters keep for slow clients.
- ``llmbrick.serving``: ``as_runtime``, what every server accepts.
"""

from __future__ import annotations

from .auth import ApiKeyAuth, CallerLimits
from .bricks import (
    Brick,
    CommonBrick,
    ComposeBrick,
    GuardBrick,
    IntentionBrick,
    LLMBrick,
    OpenAILLM,
    Pipeline,
    RectifyBrick,
    RetrievalBrick,
    TranslateBrick,
)
from .context import Principal, RequestContext, current_context
from .errors import (
    Cancelled,
    DeadlineExceeded,
    DuplicateFlow,
    ErrorCode,
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    PipelineTypeError,
    Unauthenticated,
    Unavailable,
)
from .events import (
    TERMINAL_TYPES,
    Context,
    ErrorInfo,
    Event,
    Progress,
    data_event,
    done_event,
    error_event,
    meta_event,
    text_event,
)
from .observe import RuntimeObserver
from .registry import FlowRegistry, FlowSpec
from .requests import ChatRequest, Message, WireModel
from .runtime import FlowRuntime
from .store import MemoryStore

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_TYPES",
    "ApiKeyAuth",
    "Brick",
    "CallerLimits",
    "Cancelled",
    "ChatRequest",
    "CommonBrick",
    "ComposeBrick",
    "Context",
    "DeadlineExceeded",
    "DuplicateFlow",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "FlowNotFound",
    "FlowRegistry",
    "FlowRuntime",
    "FlowSpec",
    "GuardBrick",
    "IntentionBrick",
    "InvalidRequest",
    "LLMBrick",
    "LLMBrickError",
    "MemoryStore",
    "Message",
    "OpenAILLM",
    "Overloaded",
    "PermissionDenied",
    "Pipeline",
    "PipelineTypeError",
    "Principal",
    "Progress",
    "RectifyBrick",
    "RequestContext",
    "RetrievalBrick",
    "RuntimeObserver",
    "TranslateBrick",
    "Unauthenticated",
    "Unavailable",
    "WireModel",
    "current_context",
    "data_event",
    "done_event",
    "error_event",
    "meta_event",
    "text_event",
]
