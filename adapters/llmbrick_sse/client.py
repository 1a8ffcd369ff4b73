"""``SSEClient``: call an llmbrick SSE server from Python, with the API every client shares."""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from httpx_sse import aconnect_sse

from llmbrick import DeadlineExceeded, Event, Unavailable
from llmbrick.client import (
    EventStream,
    FlowClient,
    FlowRequest,
    build_payload,
    error_in_body,
    exception_for,
    tls_context,
)

__all__ = ["SSEClient"]


class SSEClient(FlowClient):
    """Streams flows from an llmbrick SSE server over a pool of HTTP connections.

    The frames are parsed by ``httpx-sse`` as the SSE specification reads them
    (``\\n``, ``\\r\\n`` or ``\\r`` line ends, several ``data`` lines, comments),
    so a proxy or another server that writes other line ends is read right.

    Errors follow the policy of :class:`llmbrick.client.FlowClient`:

    * ``Unavailable`` is raised, with the ``httpx`` error as ``__cause__``, when
      no llmbrick server answered: refused, DNS or TLS failure, no response
      within ``timeout``, an HTTP error without llmbrick's JSON error body (a
      proxy's 502, say), a ``200`` that is not an event stream, or the
      connection lost before the first event.
    * What the server reported as an HTTP status with llmbrick's error body
      (unknown flow, invalid request, wrong API key, overload) is the stream's
      one terminal ``error`` event, numbered ``1``, as the WebSocket and gRPC
      clients deliver it. So is a connection lost after the first event
      (``UNAVAILABLE``), and a stream silent for longer than ``read_timeout``
      once the server answered (``DEADLINE_EXCEEDED``).

    Args:
        url: the server's base URL, ``http://host:port`` or ``https://host:port``.
        prefix: the server's mount prefix (as ``SSEServer(prefix=...)``).
        path: the chat endpoint's path under the prefix.
        api_key: sent as ``Authorization: Bearer <key>``.
        headers: HTTP headers sent with every request (``x-request-id``, say).
        timeout: seconds to connect and to get the response's status line.
        read_timeout: seconds a started stream may stay silent; the server's
            ``: ping`` comments (every 15 s by default) count, so a slow flow is
            not cut off. ``None``: no limit.
        verify: check the server's certificate (``True``: against the system's
            CAs), or an ``ssl.SSLContext`` to check it with; ``False`` does not.
        ca_file: a PEM file of the CAs to trust for ``https://`` (a private CA).
        cert_file, key_file: a client certificate and its key, for servers that
            ask for one (mutual TLS).

    Raises:
        ValueError: the URL is not ``http(s)://``, or the TLS options contradict.
    """

    transport = "SSE"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        path: str = "/chat/completions",
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
        read_timeout: float | None = 60.0,
        verify: bool | ssl.SSLContext = True,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        super().__init__(api_key=api_key, headers=headers, timeout=timeout)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ValueError(f"an SSE server's URL is http://HOST:PORT or https://...; got {url!r}")
        if read_timeout is not None and not read_timeout > 0:
            raise ValueError(f"read_timeout must be a positive number, got {read_timeout!r}")
        context = tls_context(ca_file, cert_file, key_file)
        if context is not None:
            if verify is not True:
                raise ValueError("give either verify= or ca_file/cert_file, not both")
            verify = context
        self.url = url.rstrip("/")
        self.prefix = prefix.rstrip("/")
        self.path = self.prefix + path
        self.read_timeout = read_timeout
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=httpx.Timeout(timeout, read=read_timeout),
            verify=verify,
        )

    async def _close(self) -> None:
        await self._http.aclose()

    def stream(self, flow: str | None, request: FlowRequest) -> EventStream:
        """Yield the events of ``flow`` run on ``request``, ending with its terminal event.

        Raises:
            Unavailable: (while iterating) no llmbrick server answered.
        """
        return self._guard(self._events(build_payload(flow, request)))

    def resume(self, stream_id: str, after: int = 0, *, token: str | None = None) -> EventStream:
        """The events of a kept stream after ``after``: ``GET /streams/<id>`` with
        ``Last-Event-ID`` (see :meth:`FlowClient.resume`)."""
        headers = {"last-event-id": f"{stream_id}:{after}"} if after else {}
        params = {"token": token} if token is not None else {}
        url = f"{self.prefix}/streams/{quote(stream_id, safe='')}"
        return self._guard(self._events(None, "GET", url, headers=headers, params=params))

    async def cancel(self, stream_id: str, *, token: str | None = None) -> None:
        """``DELETE /streams/<id>`` (see :meth:`FlowClient.cancel`)."""
        self._check_open()
        params = {"token": token} if token is not None else {}
        url = f"{self.prefix}/streams/{quote(stream_id, safe='')}"
        try:
            response = await self._http.delete(url, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code == 204:
            return
        error = error_in_body(response.content)
        if error is None:
            raise self._unreachable(self._not_llmbrick(response))
        raise exception_for(error)

    async def _events(
        self,
        payload: dict[str, Any] | None,
        method: str = "POST",
        url: str | None = None,
        **options: Any,
    ) -> AsyncGenerator[Event]:
        answered = False
        if payload is not None:
            options["content"] = orjson.dumps(payload)
            options["headers"] = {"content-type": "application/json"}
        try:
            async with aconnect_sse(self._http, method, url or self.path, **options) as source:
                response = source.response
                answered = True
                if response.status_code != 200:
                    error = error_in_body(await response.aread())
                    if error is None:
                        raise self._not_llmbrick(response)
                    yield {"type": "error", "error": error}
                    return
                async for frame in source.aiter_sse():
                    if frame.data:  # a frame with an id or a retry but no data carries no event
                        yield _event(frame.data)
        except httpx.ReadTimeout as exc:
            if answered:
                limit = self.read_timeout
                raise DeadlineExceeded(
                    f"the SSE stream sent nothing for {limit:g} s (the client's read_timeout)"
                ) from exc
            raise self._unreachable(exc) from exc
        except (httpx.HTTPError, ValueError) as exc:
            # Also httpx_sse.SSEError (a 200 that is not an event stream) and a data line
            # that is not an event: whatever answered is not an llmbrick SSE endpoint.
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> Unavailable:
        what = str(exc) or type(exc).__name__
        return Unavailable(f"no llmbrick SSE server answered at {self.url}{self.path}: {what}")

    def _not_llmbrick(self, response: httpx.Response) -> httpx.HTTPStatusError:
        # No llmbrick error body: the answer came from something else (a proxy, another app).
        return httpx.HTTPStatusError(
            f"HTTP {response.status_code} without an llmbrick error body",
            request=response.request,
            response=response,
        )

    async def list_flows(self) -> list[dict[str, Any]]:
        """Names, descriptions and request schemas of the server's flows (``GET /flows``).

        Raises:
            Unavailable: no llmbrick server answered.
            LLMBrickError: the server refused, e.g. ``Unauthenticated`` without a valid key.
        """
        self._check_open()
        try:
            response = await self._http.get(f"{self.prefix}/flows")
            if response.status_code != 200:
                error = error_in_body(response.content)
                if error is not None:
                    raise exception_for(error)
                raise self._not_llmbrick(response)
            flows = response.json()["flows"]
            if not isinstance(flows, list):
                raise TypeError("'flows' is not a list")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise self._unreachable(exc) from exc
        return flows


def _event(data: str) -> Event:
    event = orjson.loads(data)
    if type(event) is not dict or not isinstance(event.get("type"), str):
        raise ValueError(f"a data line that is not an llmbrick event: {data[:80]!r}")
    result: Event = event  # type: ignore[assignment]
    return result
