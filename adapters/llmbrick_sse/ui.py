"""The Vercel AI SDK's UI message stream: ``POST /v1/ui/chat`` for ``useChat``, and
``GET /v1/ui/chat/{chatId}/stream`` for its ``resume: true``.

A React (or Vue, Svelte, plain) page using the AI SDK's ``useChat`` with
``new DefaultChatTransport({api: "/v1/ui/chat"})`` talks to a gateway as it
would to a Next.js route calling ``streamText``: the request is the SDK's
``{id, messages: [{id, role, parts}], trigger, messageId, ...body}`` and the
answer is its UI message stream, SSE ``data: {json}`` frames of *chunks*
ending with ``data: [DONE]``. This module is only the wire format (a
:class:`HttpCodec`); auth, limits, pings, slow readers and cancelling the
flow when the page aborts are :class:`StreamEndpoint`'s, as on every HTTP route.

Requests. The flow is the body's ``flow`` field (set it with the transport's
``body`` option), else the route's own (``create_ui_router(runtime,
flow=...)``), else ``default``; it must take chat ``messages``. UI messages
become llmbrick chat messages: text parts joined as ``content``; an
assistant's tool parts that have an outcome become ``toolCalls`` followed by
one ``tool`` message each (so a conversation with client-side tools goes round
trip); reasoning, source, step and data parts are display-only and skipped;
file parts are refused (422), so a flow never misses an attachment silently.
The chat ``id`` becomes ``sessionId`` when the flow's request has one and the
body does not set it. Other body fields go to the flow's request as they are,
and its model rejects the ones it does not know (422).

Answers. Events map to chunks::

    first event      start {messageId}, start-step
    text             text-start {id} (once per run of text), text-delta {id, delta}
    tool_call        text-end if text was open, tool-input-available
                     {toolCallId, toolName, input} (tool-input-error if the
                     arguments are not JSON)
    done             text-end, finish-step, finish {finishReason}
    error            text-end, finish-step, error {errorText}, finish {"error"}
    anything else    data-<type> {id: event id, data: the event's other fields}
    end of stream    data: [DONE]

``errorText`` is ``"<CODE>: <message>"``, which the SDK reports as the
error's message. When the request's last message is the assistant's (a resubmit
after tool outputs), ``start`` carries that message's id, so the SDK continues
it instead of starting another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from litestar import Router
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from llmbrick import ErrorCode, ErrorInfo, Event, InvalidRequest
from llmbrick.flow_control import DEFAULT_BUFFER_BYTES
from llmbrick.runtime import DISCONNECT_HEADER

from .codec import PING, status_for_error
from .codec import error_body as _error_body
from .endpoint import KeptStreamEndpoint, StreamEndpoint
from .server import send_not_found
from .wire import MAX_ECHO, FrameWriter, Opening

if TYPE_CHECKING:
    from llmbrick import FlowRuntime
    from llmbrick.context import Headers
    from llmbrick.stream import FlowStream, InvokeResult
    from llmbrick_http import HttpSettings

__all__ = ["UI_STREAM_HEADERS", "UICodec", "chat_tag", "create_ui_router", "ui_messages_to_chat"]

#: The response headers of a UI message stream; the SDK's own server sends the same.
UI_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
]

# Body fields of the SDK's request that are the transport's, not the flow's.
_UI_FIELDS = frozenset({"id", "messages", "trigger", "messageId", "flow", "stream"})
_ROLES = frozenset({"system", "user", "assistant"})
# Parts a page shows but a model is not sent back (the SDK's convertToModelMessages
# drops them too, reasoning aside, which llmbrick's chat messages have no place for).
_DISPLAY_ONLY = frozenset({"step-start", "reasoning", "source-url", "source-document"})
# Tool part states that have an outcome to send back to the flow.
_ANSWERED = frozenset({"output-available", "output-error"})
# llmbrick (OpenAI) finish reasons to the SDK's.
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}
_DONE = b"data: [DONE]\n\n"
_POLICY_HEADER = DISCONNECT_HEADER.encode()
_MAX_CHAT_ID = 256  # longer chat ids are served but not indexed for resuming


def _problem(loc: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"invalid request: {loc}: {message}",
        details=[{"loc": loc, "message": message, "type": "value_error"}],
    )


def _shown(value: object) -> str:
    text = str(value)
    return text[:MAX_ECHO] + ("..." if len(text) > MAX_ECHO else "")


class _Turn:
    """One assistant step being converted: its text, its tool calls, their results."""

    __slots__ = ("calls", "results", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def messages(self) -> Iterator[dict[str, Any]]:
        if not self.texts and not self.calls:
            return
        message: dict[str, Any] = {"role": "assistant"}
        if self.texts or not self.calls:
            message["content"] = "".join(self.texts)
        if self.calls:
            message["toolCalls"] = self.calls
        yield message
        yield from self.results


def _tool_part(part: dict[str, Any], loc: str, turn: _Turn) -> None:
    """Adds an answered tool part to ``turn``; unanswered ones are left out.

    A call without its result is an incomplete exchange (a page still running the
    tool, or one that stopped): model servers refuse such a conversation.
    """
    if part.get("state") not in _ANSWERED:
        return
    call_id = part.get("toolCallId")
    if not isinstance(call_id, str) or not call_id:
        raise _problem(f"{loc}.toolCallId", "must be a non-empty string")
    kind = part["type"]
    name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
    if not isinstance(name, str) or not name:
        raise _problem(f"{loc}.toolName", "must be a non-empty string")
    arguments = orjson.dumps(part.get("input", {})).decode()
    turn.calls.append(
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    )
    if part["state"] == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else orjson.dumps(output).decode()
    else:
        content = str(part.get("errorText") or "the tool failed")
    turn.results.append({"role": "tool", "toolCallId": call_id, "content": content})


def _convert(message: Any, loc: str) -> Iterator[dict[str, Any]]:
    if not isinstance(message, dict):
        raise _problem(loc, "must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise _problem(f"{loc}.role", f"must be system, user or assistant, not {_shown(role)!r}")
    parts = message.get("parts")
    if parts is None and isinstance(message.get("content"), str):
        parts = [{"type": "text", "text": message["content"]}]  # the SDK's older shape
    if not isinstance(parts, list):
        raise _problem(f"{loc}.parts", "must be a list of parts")
    turn = _Turn()
    for index, part in enumerate(parts):
        where = f"{loc}.parts.{index}"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _problem(f"{where}.type", "must be a string")
        kind: str = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _problem(f"{where}.text", "must be a string")
            if turn.calls and role == "assistant":
                yield from turn.messages()  # text after tool calls belongs to the next step
                turn = _Turn()
            turn.texts.append(text)
        elif kind == "step-start" and role == "assistant":
            yield from turn.messages()
            turn = _Turn()
        elif kind in _DISPLAY_ONLY or kind.startswith("data-"):
            continue
        elif (kind.startswith("tool-") or kind == "dynamic-tool") and role == "assistant":
            _tool_part(part, where, turn)
        elif kind == "file":
            raise _problem(
                where, "file parts are not supported here; this route carries text and tools"
            )
        else:
            raise _problem(f"{where}.type", f"{_shown(kind)!r} is not a part this route takes")
    if role == "assistant":
        yield from turn.messages()
    else:
        yield {"role": role, "content": "".join(turn.texts)}


def ui_messages_to_chat(messages: Any) -> list[dict[str, Any]]:
    """llmbrick chat messages (camelCase dicts) for the AI SDK's UI messages.

    Raises:
        InvalidRequest: a message or part is malformed, or is a file (``details``
            names its place, e.g. ``messages.2.parts.0``).
    """
    if not isinstance(messages, list) or not messages:
        raise _problem("messages", "must be a non-empty list of UI messages")
    chat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        chat.extend(_convert(message, f"messages.{index}"))
    return chat


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _tool_input(data: dict[str, Any]) -> tuple[Any, str | None]:
    """The call's input as JSON, or the raw text and why it is not JSON."""
    arguments = data.get("arguments")
    if arguments is None:
        return {}, None
    if not isinstance(arguments, str):
        return arguments, None  # a flow may give an object, which is the input already
    if not arguments.strip():
        return {}, None
    try:
        return orjson.loads(arguments), None
    except orjson.JSONDecodeError:
        return arguments, "the tool call's arguments are not valid JSON"


class _ChunkWriter:
    """Turns one stream's events into UI message chunks; keeps the open text part."""

    __slots__ = ("_calls", "_finish", "_message_id", "_started", "_text", "_texts")

    def __init__(self, message_id: str) -> None:
        self._message_id = message_id
        self._started = False
        self._text: str | None = None
        self._texts = 0
        self._calls = 0
        self._finish: str | None = None

    def encode(self, event: Event) -> bytes:
        frames: list[bytes] = []
        if not self._started:
            self._started = True
            frames.append(_data({"type": "start", "messageId": self._message_id}))
            frames.append(_data({"type": "start-step"}))
        kind = event["type"]
        if kind == "text":
            text = event.get("text")
            if isinstance(text, str) and text:
                if self._text is None:
                    self._texts += 1
                    self._text = f"text-{self._texts}"
                    frames.append(_data({"type": "text-start", "id": self._text}))
                frames.append(_data({"type": "text-delta", "id": self._text, "delta": text}))
        elif kind == "tool_call":
            self._end_text(frames)
            frames.append(self._tool_call(event))
        elif kind == "done":
            self._end_text(frames)
            frames.append(_data({"type": "finish-step"}))
            frames.append(_data({"type": "finish", "finishReason": self._finish_reason()}))
        elif kind == "error":
            self._end_text(frames)
            error = event.get("error") or {"code": ErrorCode.INTERNAL.value, "message": ""}
            frames.append(_data({"type": "finish-step"}))
            frames.append(_data({"type": "error", "errorText": _error_text(error)}))
            frames.append(_data({"type": "finish", "finishReason": "error"}))
        else:
            if kind == "meta":
                self._note_finish(event)
            fields = {k: v for k, v in event.items() if k not in ("type", "id", "progress")}
            part: dict[str, Any] = {"type": f"data-{kind}", "data": fields}
            if "id" in event:
                part["id"] = event["id"]
            frames.append(_data(part))
        return b"".join(frames)

    def close(self) -> bytes:
        return _DONE

    def _end_text(self, frames: list[bytes]) -> None:
        if self._text is not None:
            frames.append(_data({"type": "text-end", "id": self._text}))
            self._text = None

    def _tool_call(self, event: Event) -> bytes:
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        self._calls += 1
        call_id = data.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call-{self._message_id}-{self._calls}"
        name = str(data.get("name") or "")
        tool_input, problem = _tool_input(data)
        chunk: dict[str, Any] = {
            "type": "tool-input-available" if problem is None else "tool-input-error",
            "toolCallId": call_id,
            "toolName": name,
            "input": tool_input,
        }
        if problem is not None:
            chunk["errorText"] = problem
        return _data(chunk)

    def _note_finish(self, event: Event) -> None:
        metadata = event.get("metadata")
        if isinstance(metadata, dict):
            reason = metadata.get("finishReason")
            if isinstance(reason, str):
                self._finish = _FINISH_REASONS.get(reason, "other")

    def _finish_reason(self) -> str:
        if self._finish is not None:
            return self._finish
        return "tool-calls" if self._calls else "stop"


def _error_text(error: ErrorInfo | dict[str, Any]) -> str:
    return f"{error.get('code', ErrorCode.INTERNAL.value)}: {error.get('message', '')}"


class UICodec:
    """The AI SDK's UI message stream on :class:`StreamEndpoint` (see the module docstring).

    Args:
        flow: the flow this route runs when the body names none (``None``: ``default``);
            a body naming another flow is refused, so a page cannot reach past its route.
    """

    transport = "ui"
    stream_headers = UI_STREAM_HEADERS
    #: An SSE comment: the SDK's event parser skips it.
    ping = PING

    def __init__(self, flow: str | None = None) -> None:
        self.flow = flow

    def open(self, body: Any, headers: Headers, runtime: FlowRuntime) -> Opening:
        if not isinstance(body, dict):
            raise _problem("(root)", f"the body must be a JSON object, got {type(body).__name__}")
        name = self._flow_name(body.get("flow", None))
        spec = runtime.registry.get(name)
        fields = spec.request_model.model_fields
        if "messages" not in fields:
            raise _problem(
                "flow", f"flow {spec.name!r} takes no chat messages; call it on /chat/completions"
            )
        messages = body.get("messages")
        payload = {key: value for key, value in body.items() if key not in _UI_FIELDS}
        payload["messages"] = ui_messages_to_chat(messages)
        chat_id = body.get("id")
        if (
            isinstance(chat_id, str)
            and chat_id
            and "session_id" in fields
            and "sessionId" not in payload
            and "session_id" not in payload
        ):
            payload["sessionId"] = chat_id  # the chat is the conversation a flow may remember
        tag = chat_tag(chat_id) if isinstance(chat_id, str) and chat_id else None
        return Opening(spec.name, payload, True, {"continues": _continued(messages)}, tag=tag)

    def _flow_name(self, named: Any) -> str:
        if named is not None and not isinstance(named, str):
            raise _problem("flow", "must be a string")
        if self.flow is None:
            return named or "default"
        if named is not None and named != self.flow:
            raise _problem("flow", f"this route runs flow {self.flow!r}, not {_shown(named)!r}")
        return self.flow

    def writer(self, stream: FlowStream, opening: Opening) -> FrameWriter:
        continues = opening.options.get("continues")
        return _ChunkWriter(continues if isinstance(continues, str) else f"msg-{stream.id}")

    def document(self, result: InvokeResult, stream: FlowStream, opening: Opening) -> bytes:
        # Not reached: the UI protocol always streams. One JSON document is still an answer.
        return orjson.dumps(result)

    def status_for(self, error: ErrorInfo) -> int:
        return status_for_error(error)

    def error_body(self, error: ErrorInfo, status: int) -> bytes:
        return _error_body(error)


def chat_tag(chat_id: str) -> str | None:
    """The tag a chat's streams are kept under (``None`` for an id too long to index)."""
    return f"ui-chat:{chat_id}" if len(chat_id) <= _MAX_CHAT_ID else None


def _continued(messages: Any) -> str | None:
    """The id of the request's last message when it is the assistant's (to continue it)."""
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        message_id = last.get("id")
        if isinstance(message_id, str) and message_id:
            return message_id
    return None


def create_ui_router(
    runtime: FlowRuntime,
    *,
    path: str = "/v1/ui/chat",
    flow: str | None = None,
    prefix: str = "",
    max_body_size: int = 1 << 20,
    ping_interval: float = 15.0,
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    settings: HttpSettings | None = None,
    name: str = "llmbrick-ui-chat",
) -> Router:
    """``POST {prefix}{path}``: the AI SDK's UI message stream for ``useChat``, and
    ``GET {prefix}{path}/{chatId}/stream``, where ``useChat({resume: true})`` (the
    chat's ``resumeStream()``) reads a chat's stream again after a reload.

    The SDK's ``stop()`` aborts the request, which the server cannot tell from a
    dropped connection, so a request that names no ``llmbrick-on-disconnect``
    policy gets ``cancel``: stop cancels the flow. An app that resumes chats sends
    ``llmbrick-on-disconnect: grace`` (the transport's ``headers``) to a server
    that keeps streams: the flow then runs on for ``grace`` seconds after a
    drop, and the ``GET`` replays the chat's newest kept stream from its start
    (``204`` when there is none); stop then ends the flow after the grace only,
    the trade-off the SDK documents for resumable streams.

    Args:
        runtime: the runtime shared with every other adapter.
        path: the route (the transport's ``api``).
        flow: the flow this route runs when the body names none; a body naming
            another is refused (``None``: the body's ``flow``, else ``default``).
        prefix: mounted under this path.
        max_body_size: bytes a request body may have (413 beyond); a long chat
            resends its whole history on every turn.
        ping_interval: seconds of silence before a keepalive comment (0 disables).
        max_buffer_bytes: encoded bytes kept per stream for a slow client; the
            flow waits beyond.
        settings: the HTTP limits (body read timeout).
        name: the route's name (give each one its own when mounting several).
    """
    endpoint = StreamEndpoint(
        runtime,
        UICodec(flow),
        max_body_size=max_body_size,
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        settings=settings,
    )

    resume = KeptStreamEndpoint(
        runtime,
        endpoint.codec,
        ping_interval=ping_interval,
        max_buffer_bytes=max_buffer_bytes,
        tag_of=_scope_tag,
    )

    async def ui_chat(scope: Scope, receive: Receive, send: Send) -> None:
        # Mounted, so the path is what follows {path}: nothing for a chat turn,
        # /<chat id>/stream for a resume (Litestar routes path parameters of ASGI
        # handlers badly).
        rest = str(scope.get("path", "")).strip("/")
        if rest:
            chat_id, _, tail = rest.partition("/")
            if tail != "stream" or not chat_id:
                await send_not_found(send)
            else:
                await resume(scope, receive, send)
            return
        headers = scope["headers"]
        if not any(key.lower() == _POLICY_HEADER for key, _ in headers):
            scope["headers"] = [*headers, (_POLICY_HEADER, b"cancel")]
        await endpoint(scope, receive, send)

    return Router(
        path=prefix or "/",
        route_handlers=[asgi(path, is_mount=True, copy_scope=True, name=name)(ui_chat)],
    )


def _scope_tag(scope: Scope) -> str | None:
    # An id too long to have been indexed finds nothing, as an unknown one does.
    return chat_tag(str(scope.get("path", "")).strip("/").partition("/")[0])
