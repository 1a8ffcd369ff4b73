"""``OpenAILLM``: a streaming LLM brick on the official ``openai`` SDK.

It speaks the Chat Completions API, so one brick drives OpenAI and every server
that copies that API: vLLM, Ollama, llama.cpp's server, LiteLLM, or another
llmbrick gateway. The SDK is imported when a brick is built, never with this
module, so the core stays importable with pydantic alone.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from ..errors import (
    DeadlineExceeded,
    ErrorCode,
    InvalidRequest,
    LLMBrickError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .kinds import LLMBrick
from .models import BrickEvent, LLMRequest, TextChunk

if TYPE_CHECKING:
    from openai import APIError, APIStatusError, AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk

__all__ = ["OpenAILLM"]

_log = logging.getLogger(__name__)

# Request fields sent under the same name when the request sets them.
_PASSED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "user",
    "tools",
    "tool_choice",
)
# What the brick sets itself on every call; a default for these would be overwritten.
_RESERVED = frozenset({"messages", "stream", "stream_options"})
# Sent when no key is configured for a server other than OpenAI's: the SDK insists on
# some key, and local servers (vLLM, Ollama, llama.cpp) ignore the header.
_NO_KEY = "no-key"
# Codes an error frame from another llmbrick gateway keeps; its INTERNAL is our UNAVAILABLE.
_KEPT_CODES = frozenset(code.value for code in ErrorCode if code is not ErrorCode.INTERNAL)
# Upstream error text is for people; a page of HTML from a proxy is not.
_MAX_MESSAGE = 500


class OpenAILLM(LLMBrick):
    """Streams a chat completion from an OpenAI-compatible server.

    Text deltas become :class:`TextChunk` outputs (``text`` events in a pipeline).
    Tool calls are assembled from their deltas and yielded, each once complete, as a
    ``tool_call`` :class:`BrickEvent` with ``data`` ``{"id", "name", "arguments"}``
    (``arguments`` is the JSON text the model wrote). The stream ends with a ``meta``
    :class:`BrickEvent` carrying ``metadata.finishReason`` and, when the server
    reports it, ``metadata.usage`` (``promptTokens``, ``completionTokens``,
    ``totalTokens``). Upstream failures are raised as :class:`LLMBrickError` codes
    (401 ``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED``, 404 ``NOT_FOUND``, 400
    ``INVALID_ARGUMENT``, 429 ``RESOURCE_EXHAUSTED`` with ``details.retryAfter``,
    timeouts ``DEADLINE_EXCEEDED``, anything else ``UNAVAILABLE``); the API key is
    never part of a message.

    Args:
        model: the model to ask for, whatever the request says, so a client cannot
            pick a dearer one; ``None`` passes on the request's ``model`` instead.
        api_key: defaults to ``OPENAI_API_KEY``. Only OpenAI's own API requires one:
            with a ``base_url`` and no key, a placeholder is sent, which servers
            without authentication ignore.
        base_url: e.g. ``http://127.0.0.1:8000/v1``; defaults to ``OPENAI_BASE_URL``,
            then OpenAI's API.
        timeout: seconds the server may take to accept the connection, to answer,
            and between two chunks of the stream; ``None`` waits forever.
        max_retries: how many more times the SDK sends the request after a
            connection error, a timeout or an HTTP 408, 409, 429 or 5xx answer
            (waiting as ``Retry-After`` says if that is at most two minutes, else
            backing off from half a second). It applies only until the answer starts streaming:
            once a chunk arrived nothing is sent again, because the client already
            has part of the answer and a second one would not continue it.
        max_tokens_param: the name the server wants for the request's ``max_tokens``;
            OpenAI's reasoning models accept only ``"max_completion_tokens"``.
        name: the brick's name in pipelines, logs and errors.
        **defaults: any other ``chat.completions.create`` parameter (``temperature``,
            ``extra_body``, ...); the request's own values win.

    Attributes:
        client: the SDK's ``AsyncOpenAI`` client, for calls the brick does not make
            (listing models, embeddings); :meth:`aclose` closes it.

    Raises:
        ImportError: the ``openai`` extra is not installed.
        ValueError: no API key for OpenAI's API, or a default the brick sets itself.
    """

    def __init__(
        self,
        model: str | None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 600.0,
        max_retries: int = 2,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        name: str = "openai",
        **defaults: Any,
    ) -> None:
        super().__init__(name=name)
        try:
            import openai
        except ImportError as exc:
            raise ImportError(
                f"OpenAILLM needs the 'openai' extra ({exc.name} is missing): "
                "pip install 'llmbrick[openai]'"
            ) from exc
        clash = sorted(_RESERVED & defaults.keys())
        if clash:
            raise ValueError(f"OpenAILLM sets {', '.join(clash)} itself; drop it from the defaults")
        key = api_key or os.environ.get("OPENAI_API_KEY") or None
        url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if key is None and url is None:
            raise ValueError(
                "OpenAILLM needs an API key for OpenAI's API: pass api_key=... or set "
                "OPENAI_API_KEY (or point base_url at a server that needs none)"
            )
        self.model = model
        self.base_url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens_param = max_tokens_param
        self.defaults = defaults
        self._api_key = key
        self.client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=key or _NO_KEY, base_url=url, timeout=timeout, max_retries=max_retries
        )

    async def aclose(self) -> None:
        """Close the SDK client and its connections."""
        await self.client.close()

    # The outputs are TextChunks plus BrickEvents, which Brick.check_output lets through.
    async def handle_stream(  # type: ignore[override]
        self, request: LLMRequest
    ) -> AsyncIterator[TextChunk | BrickEvent]:
        import openai

        params = self._params(request)
        model: str = params["model"]
        # Typed by hand: with the parameters in a dict, mypy cannot pick create()'s overload.
        stream: AsyncStream[ChatCompletionChunk] | None = None
        streaming = False
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: dict[str, int] | None = None
        try:
            # The SDK's retries all happen inside create(), before the first chunk.
            stream = await self.client.chat.completions.create(stream=True, **params)
            streaming = True
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = {
                        "promptTokens": chunk.usage.prompt_tokens,
                        "completionTokens": chunk.usage.completion_tokens,
                        "totalTokens": chunk.usage.total_tokens,
                    }
                for text in _texts(chunk, calls):
                    yield TextChunk(text=text, model=chunk.model or model)
                reason = _finish_reason(chunk)
                if reason is not None:
                    finish = reason
                    for call in _complete(calls):
                        yield BrickEvent(type="tool_call", data=call)
        except openai.APIError as exc:
            raise self._failure(exc, model, streaming) from exc
        except json.JSONDecodeError as exc:
            self._warn(f"sent a frame that is not JSON: {exc}")
            raise Unavailable("the model server sent a malformed stream") from exc
        finally:
            # At once, also when the client went away: the server stops generating
            # only when it sees the connection close.
            if stream is not None:
                await stream.close()
        if finish is None:
            self._warn("ended its stream without a finish reason")
            raise Unavailable("the model server's stream ended before the answer was complete")
        metadata: dict[str, Any] = {"finishReason": finish}
        if usage is not None:
            metadata["usage"] = usage
        yield BrickEvent(type="meta", metadata=metadata)

    # -- helpers ----------------------------------------------------------------------------

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params = dict(self.defaults)
        for field in _PASSED:
            value = getattr(request, field)
            if value is not None:
                params[field] = value
        if request.max_tokens is not None:
            params[self.max_tokens_param] = request.max_tokens
        model = self.model or request.model
        if not model:
            raise InvalidRequest(
                f"the request names no model, and brick {self.name!r} has none configured"
            )
        params["model"] = model
        params["messages"] = _messages(request)
        params["stream_options"] = {"include_usage": True}
        return params

    def _failure(self, exc: APIError, model: str, streaming: bool) -> LLMBrickError:
        """The llmbrick error for an SDK error; logs what the operator needs to know."""
        import openai

        self._warn(self._scrub(str(exc)))
        if isinstance(exc, openai.APITimeoutError):
            waited = f" for {self.timeout:g} s" if self.timeout is not None else ""
            return DeadlineExceeded(f"the model server sent nothing{waited}")
        if isinstance(exc, openai.APIConnectionError):
            if streaming:
                return Unavailable("the model server's stream broke off before the answer ended")
            return Unavailable("cannot reach the model server")
        message = self._upstream_message(exc)
        if not isinstance(exc, openai.APIStatusError):
            # An error frame inside the stream. Another llmbrick gateway names one of our
            # codes; keep it, so a chain of gateways reports the original failure.
            if exc.code in _KEPT_CODES:
                return LLMBrickError(message, code=exc.code)
            return Unavailable(f"the model server failed mid-answer: {message}")
        status = exc.status_code
        if status == 401:
            # Never the server's text: it may quote the key.
            hint = "" if self._api_key else ": set api_key= or OPENAI_API_KEY"
            return Unauthenticated(f"the model server rejected the API key (HTTP 401){hint}")
        if status == 403:
            return PermissionDenied(f"the model server refused access: {message}")
        if status == 404:
            return LLMBrickError(
                f"the model server answered 404 for model {model!r}: {message}",
                code=ErrorCode.NOT_FOUND,
            )
        if status == 429:
            details: dict[str, Any] = {}
            delay = _retry_after(exc)
            if delay is not None:
                details["retryAfter"] = delay
            return LLMBrickError(
                f"the model server is rate limiting: {message}",
                code=ErrorCode.RESOURCE_EXHAUSTED,
                details=details or None,
            )
        if status == 408:
            return DeadlineExceeded(f"the model server timed out: {message}")
        if 400 <= status < 500 and status != 409:
            return InvalidRequest(f"the model server rejected the request: {message}")
        return Unavailable(f"the model server failed (HTTP {status}): {message}")

    def _upstream_message(self, exc: APIError) -> str:
        body = exc.body
        text: object = None
        if isinstance(body, dict):
            text = body.get("message")
            if text is None and isinstance(body.get("error"), str):
                text = body["error"]
        elif isinstance(body, str):
            text = body
        if not isinstance(text, str) or not text.strip():
            text = exc.message
        text = " ".join(text.split())
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        # Servers quote the key in some errors; it must never reach a client or a log.
        if self._api_key:
            text = text.replace(self._api_key, "[api key]")
        return text

    def _warn(self, problem: str) -> None:
        where = self.base_url or "OpenAI's API"
        _log.warning("brick %r: the model server at %s %s", self.name, where, problem)


def _messages(request: LLMRequest) -> list[dict[str, Any]]:
    """The request's messages as the API wants them, retrieved documents included."""
    # Snake case, as the API names its fields (a WireModel dumps camelCase by default).
    messages = [
        message.model_dump(exclude_none=True, by_alias=False) for message in request.messages
    ]
    if request.documents:
        lines = ["Answer with the help of these documents:"]
        for number, document in enumerate(request.documents, 1):
            title = f" {document.title}" if document.title else ""
            lines.append(f"[{number}]{title}\n{document.text}")
        context = "\n\n".join(lines)
        # One system message at the start: some servers' chat templates accept no other.
        first = messages[0] if messages else None
        if first is not None and first["role"] == "system" and "content" in first:
            first["content"] = f"{first['content']}\n\n{context}"
        else:
            messages.insert(0, {"role": "system", "content": context})
    return messages


def _texts(chunk: ChatCompletionChunk, calls: dict[int, dict[str, Any]]) -> list[str]:
    """The text deltas of the first choice; its tool call deltas go into ``calls``."""
    texts: list[str] = []
    for choice in chunk.choices:
        if choice.index != 0:
            continue
        delta = choice.delta
        # A refusal is what the model says instead of an answer: the user should see it.
        for text in (delta.content, delta.refusal):
            if text:
                texts.append(text)
        for part in delta.tool_calls or ():
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": []})
            # The id and name come once (some servers repeat them); arguments in pieces.
            if part.id and not call["id"]:
                call["id"] = part.id
            function = part.function
            if function is not None:
                if function.name and not call["name"]:
                    call["name"] = function.name
                if function.arguments:
                    call["arguments"].append(function.arguments)
    return texts


def _finish_reason(chunk: ChatCompletionChunk) -> str | None:
    for choice in chunk.choices:
        if choice.index == 0 and choice.finish_reason is not None:
            return str(choice.finish_reason)
    return None


def _complete(calls: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The assembled tool calls in order; emptied, since a finished choice adds no more."""
    done = [
        {"id": call["id"], "name": call["name"], "arguments": "".join(call["arguments"])}
        for _, call in sorted(calls.items())
    ]
    calls.clear()
    return done


def _retry_after(exc: APIStatusError) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms`` or ``Retry-After``."""
    headers = exc.response.headers
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value is not None:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None
