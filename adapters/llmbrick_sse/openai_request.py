"""OpenAI Chat Completions requests read into llmbrick's ``ChatRequest`` payloads. No I/O.

The OpenAI API has more fields than ``ChatRequest``. Those llmbrick has a field
for are mapped onto it (``max_completion_tokens`` becomes ``max_tokens``, the
``developer`` role becomes ``system``, text-part arrays become one string);
every other field of the API goes into ``ChatRequest.options`` under its OpenAI
name, for the flow to honour or ignore. A request is refused (400) only when
serving it would change the answer the client expects: more than one choice,
log probabilities, audio output, or image, audio and file inputs that the flow
has not declared it can read (``FlowSpec.capabilities``). A field the API does
not have is refused, as OpenAI refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmbrick import ChatRequest, ErrorCode, FlowSpec

from .wire import MAX_ECHO, Rejected

__all__ = [
    "API_FIELDS",
    "ChatCall",
    "check_fields",
    "invalid",
    "read_chat_request",
    "requested_model",
]

#: Every top-level field of a Chat Completions request (the openai SDK's
#: ``CompletionCreateParams``, deprecated ones included).
API_FIELDS = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

# Fields ChatRequest has under the same name.
_MAPPED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "metadata",
)
# Fields this module consumes itself; they never reach ``options``.
_CONSUMED = frozenset(
    {*_MAPPED, "messages", "model", "stream", "stream_options", "n"}
    | {"max_tokens", "max_completion_tokens"}
)
# The fields a message may have, whatever its role (the API's message params).
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "tool_call_id", "tool_calls", "refusal", "audio", "function_call"}
)
# Content part types and the capability a flow needs to be given them.
_PART_CAPABILITY = {"image_url": "images", "input_audio": "audio", "file": "files"}
# Joins the text parts of one message, as vLLM does for its chat templates.
_PART_SEPARATOR = "\n"


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A Chat Completions request read for one flow.

    Attributes:
        payload: the ``ChatRequest`` fields (snake_case) for the runtime to validate.
        model: the ``model`` the client asked for (the flow's name or an alias).
        streaming: ``stream: true`` (OpenAI's default is false).
        include_usage: ``stream_options.include_usage``.
    """

    payload: dict[str, Any]
    model: str
    streaming: bool
    include_usage: bool


def invalid(
    message: str, param: str | None = None, api_code: str | None = None, status: int = 400
) -> Rejected:
    """A 400 (or ``status``) naming the offending ``param``, with OpenAI's ``code`` if any.

    ``param`` and ``api_code`` travel in the error's details, where the codec's
    error body finds them.
    """
    details: dict[str, Any] = {}
    if param is not None:
        details["param"] = param
    if api_code is not None:
        details["apiCode"] = api_code
    error: Any = {"code": ErrorCode.INVALID_ARGUMENT.value, "message": message}
    if details:
        error["details"] = details
    return Rejected(status, error)


def _shown(value: object) -> str:
    text = str(value)
    return text[:MAX_ECHO] + ("..." if len(text) > MAX_ECHO else "")


def check_fields(body: Mapping[str, Any]) -> None:
    """Refuse a field the API does not have, as OpenAI does (naming it in ``param``)."""
    unknown = sorted(key for key in body if key not in API_FIELDS)
    if unknown:
        name = _shown(unknown[0])
        raise invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")


def requested_model(body: Mapping[str, Any]) -> str:
    """The ``model`` field: the flow's name or alias."""
    model = body.get("model")
    if model is None:
        raise invalid("you must provide a model parameter (a flow's name or alias)", "model")
    if not isinstance(model, str) or not model:
        raise invalid("model must be a non-empty string", "model")
    return model


def read_chat_request(body: Mapping[str, Any], spec: FlowSpec, model: str) -> ChatCall:
    """Read a Chat Completions body (already checked by :func:`check_fields`) for ``spec``.

    Raises:
        Rejected: 400 for what the flow cannot serve, or a malformed field.
    """
    if not issubclass(spec.request_model, ChatRequest):
        raise invalid(
            f"flow {spec.name!r} does not take chat requests (its request model is "
            f"{spec.request_model.__name__}); call it on /chat/completions with its own fields",
            "model",
        )
    capabilities = spec.capabilities
    streaming = _flag(body, "stream")
    include_usage = _include_usage(body)
    _check_choices(body)
    _check_outputs(body, capabilities)
    payload: dict[str, Any] = {
        "model": model,
        "messages": _messages(body.get("messages"), capabilities),
        "stream": streaming,
    }
    for name in _MAPPED:
        value = body.get(name)
        if value is not None:
            payload[name] = value
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    options = {
        key: value for key, value in body.items() if key not in _CONSUMED and value is not None
    }
    if options:
        payload["options"] = options
    return ChatCall(payload, model, streaming, include_usage)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean", name)
    return value


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    value = options.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise invalid("include_usage must be a boolean", "stream_options.include_usage")
    return value is True


def _check_choices(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is None:
        return
    if not isinstance(n, int) or isinstance(n, bool):
        raise invalid("n must be an integer", "n")
    if n != 1:
        # A flow streams one answer; several would need as many runs the client did not ask for.
        raise invalid(
            f"n={_shown(n)} is not supported: a flow gives one choice per request; "
            "send n=1 or leave it out",
            "n",
            "unsupported_value",
        )


def _check_outputs(body: Mapping[str, Any], capabilities: frozenset[str]) -> None:
    """Refuse outputs the flow has not said it produces: the client would miss them."""
    if body.get("logprobs") is True and "logprobs" not in capabilities:
        raise invalid(
            "logprobs is not supported by this model (the flow does not declare the "
            "'logprobs' capability)",
            "logprobs",
            "unsupported_value",
        )
    modalities = body.get("modalities")
    wants_audio = body.get("audio") is not None or (
        isinstance(modalities, list) and "audio" in modalities
    )
    if wants_audio and "audio" not in capabilities:
        param = "audio" if body.get("audio") is not None else "modalities"
        raise invalid(
            "audio output is not supported by this model (the flow does not declare the "
            "'audio' capability)",
            param,
            "unsupported_value",
        )


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    # max_completion_tokens is the current name; max_tokens the deprecated one.
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(f"{name} must be a positive integer", name)
        return value
    return None


def _messages(messages: object, capabilities: frozenset[str]) -> list[Any]:
    if messages is None:
        raise invalid("messages is required: a list of chat messages", "messages")
    if not isinstance(messages, list):
        raise invalid("messages must be a list of chat messages", "messages")
    return [_message(item, index, capabilities) for index, item in enumerate(messages)]


def _message(item: object, index: int, capabilities: frozenset[str]) -> Any:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        # Left to the request model, which names the field in its own words.
        return item
    # A null is "not set" in the API; a message object a client got from another
    # server and sends back may carry fields of that server's answer as null.
    unknown = sorted(
        key for key, value in item.items() if key not in _MESSAGE_FIELDS and value is not None
    )
    if unknown:
        name = _shown(unknown[0])
        raise invalid(
            f"Unrecognized argument supplied in {where}: {name}",
            f"{where}.{name}",
            "unknown_parameter",
        )
    role = item.get("role")
    if role == "function":
        raise invalid(
            "the 'function' role is deprecated and not supported; answer tool calls with "
            "role 'tool' and tool_call_id",
            f"{where}.role",
        )
    if item.get("function_call") is not None:
        raise invalid(
            "function_call in a message is deprecated and not supported; use tool_calls",
            f"{where}.function_call",
        )
    message: dict[str, Any] = {
        key: value
        for key, value in item.items()
        if key in _MESSAGE_FIELDS
        and key not in ("refusal", "audio", "function_call")
        and value is not None
    }
    if role == "developer":
        # OpenAI's newer name for the system role; every model server knows "system".
        message["role"] = "system"
    parts: list[dict[str, Any]] | None = None
    content = item.get("content")
    if isinstance(content, list):
        text, parts = _content_parts(content, where, capabilities)
        message["content"] = text
    refusal = item.get("refusal")
    if role == "assistant" and message.get("content") is None and isinstance(refusal, str):
        # What the assistant said instead of an answer is its turn's text.
        message["content"] = refusal
    audio = item.get("audio")
    if audio is not None:
        # A previous audio answer: only a flow that speaks audio can have given it.
        if "audio" not in capabilities:
            raise invalid(
                "audio in a message is not supported by this model (the flow does not "
                "declare the 'audio' capability)",
                f"{where}.audio",
                "unsupported_value",
            )
        parts = [*(parts or []), {"type": "audio", "audio": audio}]
        # Its words are in the audio; the text the flow reads is empty, not missing.
        message.setdefault("content", "")
    if parts is not None:
        message["parts"] = parts
    return message


def _content_parts(
    content: list[Any], where: str, capabilities: frozenset[str]
) -> tuple[str, list[dict[str, Any]] | None]:
    """The text of a content array, and the array itself when it holds more than text."""
    texts: list[str] = []
    rich = False
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            text = part.get(kind)
            if not isinstance(text, str):
                raise invalid(f"a {kind} part needs a string '{kind}'", f"{at}.{kind}")
            texts.append(text)
            continue
        needed = _PART_CAPABILITY.get(kind) if isinstance(kind, str) else None
        if needed is None:
            raise invalid(
                f"content part type {_shown(kind)!r} is not one of text, image_url, "
                "input_audio, file",
                f"{at}.type",
            )
        if needed not in capabilities:
            raise invalid(
                f"{kind} content is not supported by this model (the flow does not declare "
                f"the {needed!r} capability)",
                f"{at}.type",
                "unsupported_value",
            )
        rich = True
    return _PART_SEPARATOR.join(texts), (content if rich else None)
