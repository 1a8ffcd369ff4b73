"""An OpenAI-compatible model server for the ``OpenAILLM`` tests: a raw ASGI app for uvicorn.

``POST /v1/chat/completions`` streams ``chat.completion.chunk`` frames as the real
API does. The requested model name picks the behaviour:

- ``text``: "Hello", " there", "!", finish ``stop``, then usage if asked for;
  ``no-usage`` never reports usage, ``no-finish`` ends without a finish reason;
- ``tools``: two tool calls, each split over several deltas, finish ``tool_calls``;
- ``unauthorized`` 401 (quoting the key, like the real API), ``forbidden`` 403,
  ``bad-request`` 400, ``rate-limited`` 429 with ``Retry-After: 7``,
  ``rate-limited-ms`` 429 with ``retry-after-ms: 1500``, ``server-error`` 500;
  any other name is a 404 ``model_not_found``;
- ``flaky``: 500 on the first request, ``text`` afterwards;
- ``cut``: one chunk, then the connection drops;
- ``stream-error``: one chunk, then an error frame; ``gateway-error`` the same with
  an llmbrick error code, as another llmbrick gateway would send;
- ``slow``: one chunk, then the stream stays open until the client leaves, which
  sets ``disconnected``.

The app records every request, so tests count requests and synchronise on what
the server saw rather than on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Received", "Upstream"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
# Two tool calls, each split over several deltas as the real API sends them.
TOOL_DELTAS: list[dict[str, Any]] = [
    {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    },
    {"index": 0, "function": {"arguments": '{"city"'}},
    {"index": 0, "function": {"arguments": ': "Paris"}'}},
    {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time"}},
    {"index": 1, "function": {"arguments": '{"tz": '}},
    {"index": 1, "function": {"arguments": '"UTC"}'}},
]


@dataclass
class Received:
    """One request as the server got it."""

    headers: dict[str, str]
    body: dict[str, Any]


class _Reply:
    """Writes one streamed answer: SSE frames of ``chat.completion.chunk`` objects."""

    def __init__(self, send: Send, model: str) -> None:
        self._send = send
        self._model = model

    async def start(self) -> None:
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )

    async def frame(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        await self._send(
            {"type": "http.response.body", "body": f"data: {text}\n\n".encode(), "more_body": True}
        )

    async def chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        await self.frame(self._body([{"index": 0, "delta": delta, "finish_reason": finish}]))

    async def usage(self) -> None:
        # The last chunk when the request asked for usage: no choices, only the counts.
        await self.frame({**self._body([]), "usage": USAGE})

    def _body(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": self._model,
            "choices": choices,
        }

    async def end(self) -> None:
        await self.frame("[DONE]")
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class Upstream:
    """The ASGI app; its attributes are what the tests inspect."""

    def __init__(self) -> None:
        self.base_url = ""  # set by the fixture once the server listens
        self.requests: list[Received] = []
        self.disconnected = asyncio.Event()

    def count(self, model: str) -> int:
        """How many requests asked for ``model``."""
        return sum(1 for request in self.requests if request.body.get("model") == model)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", scope["type"]
        body = b""
        while True:
            part = await receive()
            body += part.get("body", b"")
            if not part.get("more_body"):
                break
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await _json(send, 404, {"error": {"message": "no such route", "type": "not_found"}})
            return
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        request = json.loads(body)
        self.requests.append(Received(headers, request))
        model = str(request.get("model"))
        reply = _Reply(send, model)
        wants_usage = (request.get("stream_options") or {}).get("include_usage") is True

        if model == "text" or (model == "flaky" and self.count(model) > 1):
            await reply.start()
            await reply.chunk({"role": "assistant", "content": ""})
            for text in ("Hello", " there", "!"):
                await reply.chunk({"content": text})
            await reply.chunk({}, finish="stop")
            if wants_usage:
                await reply.usage()
            await reply.end()
        elif model == "no-usage":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hi"})
            await reply.chunk({}, finish="length")
            await reply.end()
        elif model == "tools":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": None})
            for part in TOOL_DELTAS:
                await reply.chunk({"tool_calls": [part]})
            await reply.chunk({}, finish="tool_calls")
            if wants_usage:
                await reply.usage()
            await reply.end()
        elif model == "no-finish":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hel"})
            await reply.end()
        elif model == "unauthorized":
            key = headers.get("authorization", "").removeprefix("Bearer ")
            # Like the real API, the message quotes the key it was given.
            error = _error(f"Incorrect API key provided: {key}.", "invalid_request_error")
            await _json(send, 401, {"error": {**error, "code": "invalid_api_key"}})
        elif model == "forbidden":
            message = "Project proj_1 does not have access to model forbidden"
            await _json(send, 403, {"error": _error(message, "invalid_request_error")})
        elif model == "bad-request":
            message = "Invalid value for 'temperature': must be at most 2."
            error = {**_error(message, "invalid_request_error"), "param": "temperature"}
            await _json(send, 400, {"error": error})
        elif model == "rate-limited":
            error = _error("Rate limit reached for requests", "requests")
            await _json(send, 429, {"error": error}, [(b"retry-after", b"7")])
        elif model == "rate-limited-ms":
            error = _error("Rate limit reached for tokens", "tokens")
            headers_ = [(b"retry-after-ms", b"1500"), (b"retry-after", b"2")]
            await _json(send, 429, {"error": error}, headers_)
        elif model in ("server-error", "flaky"):
            error = _error("The server had an error while processing your request.", "server")
            # A short server-directed delay keeps the SDK's retry quick.
            await _json(send, 500, {"error": error}, [(b"retry-after-ms", b"1")])
        elif model == "cut":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hello"})
            # Returning mid-body makes uvicorn drop the connection, as a crashed server would.
            return
        elif model == "stream-error":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hello"})
            await reply.frame({"error": _error("The model is overloaded", "server_error")})
            await reply.end()
        elif model == "gateway-error":
            # What another llmbrick gateway sends when its own flow failed mid-answer.
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hello"})
            error = {"code": "PERMISSION_DENIED", "message": "guard: blocked word 'bomb'"}
            await reply.frame({"error": error})
            await reply.end()
        elif model == "slow":
            await reply.start()
            await reply.chunk({"role": "assistant", "content": "Hello"})
            # Hold the stream open; uvicorn answers receive() when the client hangs up.
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
        else:
            message = f"The model `{model}` does not exist or you do not have access to it."
            error = {**_error(message, "invalid_request_error"), "code": "model_not_found"}
            await _json(send, 404, {"error": error})


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": None, "code": None}


async def _json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
