"""The OpenAI Chat Completions API on the HTTP port: a codec on the shared streaming endpoint.

``POST /v1/chat/completions`` runs the flow that the request's ``model`` names
(its name or one of its aliases) and answers as OpenAI does, streamed
(``chat.completion.chunk`` frames, then ``data: [DONE]``) or whole (one
``chat.completion``); ``GET /v1/models`` and ``GET /v1/models/{id}`` list the
flows a caller may run. So the official SDKs, and everything built on them,
talk to a gateway unchanged. How requests are read is in
:mod:`.openai_request`, how answers and errors are written in
:mod:`.openai_response`; the request pipeline (auth, limits, pings,
cancellation on disconnect, slow readers) is :class:`StreamEndpoint`'s, as for
every HTTP route.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from litestar import Request, Response, Router, get
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from llmbrick import (
    ChatRequest,
    ErrorCode,
    ErrorInfo,
    FlowNotFound,
    FlowRuntime,
    FlowSpec,
    LLMBrickError,
    Principal,
)
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES
from llmbrick_http import HttpSettings, context_from_scope

from .codec import PING
from .endpoint import StreamEndpoint
from .openai_request import check_fields, invalid, read_chat_request, requested_model
from .openai_response import ChunkWriter, completion, error_object, is_guard_rejection, status_for
from .wire import MAX_ECHO, FrameWriter, Opening, Rejected

if TYPE_CHECKING:
    from llmbrick.context import Headers
    from llmbrick.stream import FlowStream, InvokeResult

__all__ = ["OpenAICodec", "create_openai_router"]

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class OpenAICodec:
    """OpenAI's Chat Completions wire format on :class:`StreamEndpoint`.

    ``Accept`` is not checked: the SDKs send ``application/json`` for streamed
    requests too, and OpenAI answers by the body's ``stream`` alone.
    """

    transport = "openai"
    stream_headers = _STREAM_HEADERS
    #: An SSE comment: the SDKs' event parsers skip it.
    ping = PING

    def open(self, body: Any, headers: Headers, runtime: FlowRuntime) -> Opening:
        if not isinstance(body, dict):
            raise invalid(f"the body must be a JSON object, got {type(body).__name__}")
        check_fields(body)
        model = requested_model(body)
        try:
            spec = runtime.registry.get(model)
        except FlowNotFound:
            raise _no_model(model) from None
        call = read_chat_request(body, spec, model)
        options = {"model": call.model, "include_usage": call.include_usage}
        return Opening(spec.name, call.payload, call.streaming, options)

    def writer(self, stream: FlowStream, opening: Opening) -> FrameWriter:
        return ChunkWriter(
            _completion_id(stream), opening.options["model"], opening.options["include_usage"]
        )

    def document(self, result: InvokeResult, stream: FlowStream, opening: Opening) -> bytes:
        error = result["error"]
        if error is not None and not is_guard_rejection(error):
            return self.error_body(error, status_for(error))
        answer = completion(result["events"], _completion_id(stream), opening.options["model"])
        return orjson.dumps(answer)

    def status_for(self, error: ErrorInfo) -> int:
        return status_for(error)

    def error_body(self, error: ErrorInfo, status: int) -> bytes:
        return orjson.dumps({"error": error_object(error, status)})


def _completion_id(stream: FlowStream) -> str:
    # The stream id, so a completion id in a client's log finds the server's log lines.
    return f"chatcmpl-{stream.id}"


def _no_model(model: str) -> Rejected:
    shown = model[:MAX_ECHO] + ("..." if len(model) > MAX_ECHO else "")
    error: ErrorInfo = {
        "code": ErrorCode.NOT_FOUND.value,
        "message": f"The model {shown!r} does not exist: no flow or alias has that name "
        "(the models endpoint lists them)",
        "details": {"param": "model", "apiCode": "model_not_found"},
    }
    return Rejected(404, error)


def _chat_flow(spec: FlowSpec) -> bool:
    return issubclass(spec.request_model, ChatRequest)


def _may_run(spec: FlowSpec, principal: Principal | None) -> bool:
    # The runtime's own rule: a flow with allow= needs a principal it names.
    return spec.allow is None or (principal is not None and principal.allowed(spec.allow))


def _model_names(runtime: FlowRuntime, principal: Principal | None) -> Iterator[str]:
    """The model ids a caller can use: each chat flow it may run, then its aliases."""
    for spec in runtime.registry:
        if _chat_flow(spec) and _may_run(spec, principal):
            yield spec.name
            yield from spec.aliases


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _error_response(error: ErrorInfo) -> Response[bytes]:
    status = status_for(error)
    headers = None
    if error["code"] == ErrorCode.UNAUTHENTICATED:
        headers = {"www-authenticate": 'Bearer realm="llmbrick"'}
    return _json({"error": error_object(error, status)}, status, headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors on these routes (a bad path, say) in OpenAI's error shape."""
    status = exc.status_code
    code = ErrorCode.INTERNAL if status >= 500 else ErrorCode.INVALID_ARGUMENT
    message = exc.detail if status < 500 else "internal error"
    error: ErrorInfo = {"code": code.value, "message": message}
    return _json({"error": error_object(error, status)}, status, exc.headers)


def create_openai_router(
    runtime: FlowRuntime,
    *,
    prefix: str = "/v1",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    settings: HttpSettings | None = None,
) -> Router:
    """The OpenAI API for ``runtime``: chat completions and the model list, under ``prefix``.

    Args:
        runtime: the runtime shared with every other adapter.
        prefix: where the API is mounted; clients use ``http://host:port{prefix}`` as
            their base URL.
        max_body_size: bytes a request body may have (413 beyond).
        ping_interval: seconds of silence before a keepalive comment (0 disables).
        max_buffer_bytes: encoded bytes kept per stream for a slow client; the
            flow waits beyond.
        settings: the HTTP limits (body read timeout).
    """
    endpoint = StreamEndpoint(
        runtime,
        OpenAICodec(),
        max_body_size=max_body_size,
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        settings=settings,
    )
    # Flows have no creation time; the router's start stands in for it.
    created = int(time.time())

    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    async def caller(request: Request[Any, Any, Any]) -> Principal | None:
        return await runtime.authenticate(context_from_scope(request.scope, "openai"))

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "llmbrick"}

    async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            principal = await caller(request)
        except LLMBrickError as exc:
            return _error_response(exc.to_info())
        data = [model_object(name) for name in _model_names(runtime, principal)]
        return _json({"object": "list", "data": data})

    async def retrieve_model(
        request: Request[Any, Any, Any], model_id: FromPath[str]
    ) -> Response[bytes]:
        try:
            principal = await caller(request)
        except LLMBrickError as exc:
            return _error_response(exc.to_info())
        try:
            spec = runtime.registry.get(model_id)
        except FlowNotFound:
            spec = None
        # A flow this caller may not run, or not a chat flow, is no model of theirs.
        if spec is None or not _chat_flow(spec) or not _may_run(spec, principal):
            rejected = _no_model(model_id)
            return _json({"error": error_object(rejected.error, 404)}, 404)
        return _json(model_object(model_id))

    return Router(
        path=prefix or "/",
        route_handlers=[
            asgi("/chat/completions", copy_scope=False, name="llmbrick-openai-chat")(
                chat_completions
            ),
            get("/models", name="llmbrick-openai-models", cache=False)(list_models),
            get("/models/{model_id:str}", name="llmbrick-openai-model", cache=False)(
                retrieve_model
            ),
        ],
        exception_handlers={HTTPException: _http_error},
    )
