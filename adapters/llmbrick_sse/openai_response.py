"""llmbrick events written as OpenAI Chat Completions answers, and errors in OpenAI's shape. No I/O.

A streamed answer is ``data: {chat.completion.chunk}`` frames ending with
``data: [DONE]``; a whole one is a ``chat.completion`` object. Text events
become content deltas, ``tool_call`` events tool call deltas. Every other
event (``meta``, ``data``, a flow's own types, a guard's rejection) rides on
a chunk with an empty delta, in the extension field ``llmbrick.events``,
which the SDKs ignore and other clients can read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from llmbrick import ErrorCode, ErrorInfo, Event

__all__ = [
    "ChunkWriter",
    "completion",
    "error_object",
    "is_guard_rejection",
    "status_for",
]

_STATUS: dict[str, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.UNIMPLEMENTED: 400,
    # 400 rather than 409, which the SDKs retry: registering twice is not transient.
    ErrorCode.ALREADY_EXISTS: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    # Every kind, the server's stream cap included: the SDKs raise RateLimitError
    # for 429 and back off as Retry-After says.
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.CANCELLED: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}

#: The finish reasons of the API; a flow's meta event may name one.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

_DONE = b"data: [DONE]\n\n"


def is_guard_rejection(error: ErrorInfo | Mapping[str, Any]) -> bool:
    """Whether ``error`` is a guard brick's rejection (``PERMISSION_DENIED`` naming the guard)."""
    details = error.get("details")
    return (
        error["code"] == ErrorCode.PERMISSION_DENIED
        and isinstance(details, dict)
        and "guard" in details
    )


def status_for(error: ErrorInfo | Mapping[str, Any]) -> int:
    """The HTTP status OpenAI would answer ``error`` with (500 for codes it does not know).

    A guard's rejection is 200: OpenAI reports filtered content as an answer
    with ``finish_reason: "content_filter"``, not as an error. (A guard runs
    inside the flow, so this never applies before a stream starts.)
    """
    if is_guard_rejection(error):
        return 200
    return _STATUS.get(error["code"], 500)


def error_object(
    error: ErrorInfo | Mapping[str, Any], status: int, *, neutral_code: bool = False
) -> dict[str, Any]:
    """OpenAI's ``{"message", "type", "param", "code"}`` for an llmbrick error.

    ``code`` is OpenAI's own code where the codec set one (``model_not_found``,
    ``unknown_parameter``, ``unsupported_value``), else llmbrick's neutral code;
    with ``neutral_code`` always the neutral code (an error frame mid-stream,
    which another gateway's ``OpenAILLM`` brick maps back). ``param`` names the
    offending field, as OpenAI's path (``messages[0].content``).
    """
    code: str = error["code"]
    param: str | None = None
    details = error.get("details")
    if isinstance(details, dict):
        if isinstance(details.get("param"), str):
            param = details["param"]
        if isinstance(details.get("apiCode"), str) and not neutral_code:
            code = details["apiCode"]
    elif isinstance(details, list) and details and isinstance(details[0], dict):
        # A validation error of the request model: its first field path.
        param = _param_path(str(details[0].get("loc", "")))
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"message": error["message"], "type": kind, "param": param, "code": code}


def _param_path(loc: str) -> str | None:
    """``messages.0.content`` -> ``messages[0].content``; ``None`` for the root."""
    if not loc or loc == "(root)":
        return None
    path = ""
    for part in loc.split("."):
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path


class _Tally:
    """What a stream's events add up to: finish reason, usage, tool calls."""

    __slots__ = ("calls", "finish", "texts", "usage")

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None

    def meta(self, event: Event) -> None:
        metadata = event.get("metadata")
        if not isinstance(metadata, dict):
            return
        finish = metadata.get("finishReason")
        if finish in FINISH_REASONS:
            self.finish = finish
        usage = _usage(metadata.get("usage"))
        if usage is not None:
            self.usage = usage

    def tool_call(self, event: Event, completion_id: str) -> dict[str, Any]:
        """The API's tool call (with its ``index`` in this answer) for a ``tool_call`` event."""
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        index = self.calls
        self.calls += 1
        arguments = data.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            # A flow may give the arguments as an object; the API carries JSON text.
            arguments = orjson.dumps(arguments).decode()
        call_id = data.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{completion_id}_{index}"
        return {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": str(data.get("name") or ""), "arguments": arguments},
        }

    def finish_reason(self, filtered: bool = False) -> str:
        if filtered:
            return "content_filter"
        if self.finish is not None:
            return self.finish
        return "tool_calls" if self.calls else "stop"

    def usage_object(self) -> dict[str, int]:
        """The flow's reported usage, else 0 prompt and one completion token per text event."""
        if self.usage is not None:
            return self.usage
        return {"prompt_tokens": 0, "completion_tokens": self.texts, "total_tokens": self.texts}


def _usage(value: object) -> dict[str, int] | None:
    """OpenAI's usage object from a meta event's ``usage`` (camelCase, as OpenAILLM reports it)."""
    if not isinstance(value, dict):
        return None
    usage: dict[str, int] = {}
    for ours, theirs in _USAGE_FIELDS:
        count = value.get(ours)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
        usage[theirs] = count
    return usage


_USAGE_FIELDS = (
    ("promptTokens", "prompt_tokens"),
    ("completionTokens", "completion_tokens"),
    ("totalTokens", "total_tokens"),
)


class ChunkWriter:
    """Writes one stream's events as ``chat.completion.chunk`` frames (a :class:`FrameWriter`).

    Args:
        completion_id: ``chatcmpl-...``, the same on every chunk of the stream.
        model: the model name the client asked for.
        include_usage: end with a usage chunk (empty ``choices``), as
            ``stream_options.include_usage`` asks.
        created: the Unix time on every chunk (default: now).
    """

    __slots__ = ("_failed", "_head", "_id", "_include_usage", "_role_sent", "_tally")

    def __init__(
        self, completion_id: str, model: str, include_usage: bool, created: int | None = None
    ) -> None:
        stamp = int(time.time()) if created is None else created
        # Everything before "choices" is the same on every chunk: encoded once.
        self._head = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s' % (
            orjson.dumps(completion_id),
            stamp,
            orjson.dumps(model),
        )
        self._id = completion_id
        self._include_usage = include_usage
        self._role_sent = False
        self._failed = False
        self._tally = _Tally()

    def encode(self, event: Event) -> bytes:
        kind = event["type"]
        tally = self._tally
        if kind == "text":
            tally.texts += 1
            return self._chunk({"content": event.get("text", "")}, logprobs=event.get("logprobs"))
        if kind == "tool_call":
            return self._chunk({"tool_calls": [tally.tool_call(event, self._id)]})
        if kind == "done":
            return self._chunk({}, finish=tally.finish_reason()) + self._usage_chunk()
        if kind == "error":
            error = event["error"]
            if is_guard_rejection(error):
                filtered = self._chunk(
                    {}, finish=tally.finish_reason(filtered=True), events=[event]
                )
                return filtered + self._usage_chunk()
            # The SDKs raise APIError on a data frame holding "error"; the neutral code
            # lets another gateway's OpenAILLM report the original failure.
            self._failed = True
            frame = {"error": error_object(error, status_for(error), neutral_code=True)}
            return b"data: %s\n\n" % orjson.dumps(frame)
        if kind == "meta":
            tally.meta(event)
        return self._chunk({}, events=[event])

    def close(self) -> bytes:
        # No [DONE] after an error frame: a client that waits for it to call an
        # answer complete (a hand-written parser, curl in a script) sees the truth.
        return b"" if self._failed else _DONE

    def _chunk(
        self,
        delta: dict[str, Any],
        *,
        finish: str | None = None,
        logprobs: Any = None,
        events: list[Event] | None = None,
    ) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        tail = b"" if events is None else b',"llmbrick":' + orjson.dumps({"events": events})
        return b'%s,"choices":%s%s}\n\n' % (self._head, orjson.dumps([choice]), tail)

    def _usage_chunk(self) -> bytes:
        if not self._include_usage:
            return b""
        usage = orjson.dumps(self._tally.usage_object())
        return b'%s,"choices":[],"usage":%s}\n\n' % (self._head, usage)


def completion(
    events: list[Event], completion_id: str, model: str, created: int | None = None
) -> dict[str, Any]:
    """The ``chat.completion`` object for a finished stream that did not fail.

    A guard's rejection is not a failure here: the answer ends with
    ``finish_reason: "content_filter"`` and the rejection is in ``llmbrick.events``.
    """
    tally = _Tally()
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[Any] = []
    extra: list[Event] = []
    filtered = False
    for event in events:
        kind = event["type"]
        if kind == "text":
            tally.texts += 1
            texts.append(event.get("text", ""))
            content = event.get("logprobs")
            if isinstance(content, dict) and isinstance(content.get("content"), list):
                logprobs.extend(content["content"])
        elif kind == "tool_call":
            call = tally.tool_call(event, completion_id)
            del call["index"]
            calls.append(call)
        elif kind == "done":
            continue
        else:
            if kind == "meta":
                tally.meta(event)
            elif kind == "error":
                filtered = True
            extra.append(event)
    text = "".join(texts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if not text and (calls or filtered) else text,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    answer: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
                "finish_reason": tally.finish_reason(filtered),
            }
        ],
        "usage": tally.usage_object(),
    }
    if extra:
        answer["llmbrick"] = {"events": extra}
    return answer
