"""A Python client for the SSE endpoint, with the method shape every llmbrick client shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

from llmbrick import Event, InvokeResult, collect_events

from .codec import decode_frame

__all__ = ["SSEClient"]


class SSEClient:
    """Streams flows from an llmbrick SSE server over one pooled HTTP connection set.

    Pre-stream errors (unknown flow, invalid request, overload) arrive as the one
    terminal ``error`` event, exactly as the WebSocket and gRPC clients report them.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        prefix: the server's mount prefix (as ``SSEServer(prefix=...)``).
        path: the chat endpoint's path under the prefix.
        timeout: seconds to wait for the connection and for each read.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        path: str = "/chat/completions",
        timeout: float | None = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.prefix = prefix.rstrip("/")
        self.path = self.prefix + path
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> SSEClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def stream(
        self, flow: str, request: Mapping[str, Any] | BaseModel
    ) -> AsyncIterator[Event]:
        """Yield the events of ``flow`` run on ``request``, ending with its terminal event."""
        payload = _payload(flow, request)
        headers = {"accept": "text/event-stream", "content-type": "application/json"}
        async with self._http.stream(
            "POST", self.path, content=orjson.dumps(payload), headers=headers
        ) as response:
            if response.status_code != 200:
                body = await response.aread()
                yield _error_event(response.status_code, body)
                return
            buffer = b""
            async for chunk in response.aiter_bytes():
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    event = decode_frame(frame)
                    if event is not None:
                        yield event

    async def invoke(self, flow: str, request: Mapping[str, Any] | BaseModel) -> InvokeResult:
        """Run ``flow`` to its end and return every event, the joined text and the error."""
        return collect_events([event async for event in self.stream(flow, request)])

    async def list_flows(self) -> list[dict[str, Any]]:
        """Names, descriptions and request schemas of the server's flows."""
        response = await self._http.get(f"{self.prefix}/flows")
        response.raise_for_status()
        flows: list[dict[str, Any]] = response.json()["flows"]
        return flows


def _payload(flow: str, request: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        body = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        body = dict(request)
    body["flow"] = flow
    return body


def _error_event(status: int, body: bytes) -> Event:
    try:
        error = orjson.loads(body)["error"]
        if isinstance(error["code"], str) and isinstance(error["message"], str):
            return {"type": "error", "error": error, "id": "1", "progress": "ERROR"}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    code = "UNAVAILABLE" if status >= 500 else "INTERNAL"
    return {
        "type": "error",
        "error": {"code": code, "message": f"HTTP {status} without an llmbrick error body"},
        "id": "1",
        "progress": "ERROR",
    }
