"""``GrpcClient``: call an llmbrick gRPC server from Python over one reused channel."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from pydantic import BaseModel

from llmbrick import Event, InvokeResult, collect_events

from ._generated import flow_pb2, flow_pb2_grpc
from ._options import merge_options
from .codec import decode_event, decode_flow_info, encode_request, error_from_metadata
from .errors import error_info, exception_for

__all__ = ["GrpcClient", "channel_options", "open_channel"]


def channel_options(
    *,
    max_message_bytes: int = 4 << 20,
    keepalive_time: float = 30.0,
    keepalive_timeout: float = 10.0,
) -> list[tuple[str, int]]:
    """Client channel arguments matching :func:`~llmbrick_grpc.server_options`.

    Pings every ``keepalive_time`` seconds (no more often than the server
    accepts) notice a dead server during a long silent stream.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``address`` with :func:`channel_options` and ``options``.

    An option with the key of a default replaces it.
    """
    merged = merge_options(channel_options(), options)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=merged)
    return grpc.aio.secure_channel(address, credentials, options=merged)


def _payload(flow: str | None, request: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        payload = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        payload = dict(request)
    if flow is not None:
        payload["flow"] = flow
    return payload


class GrpcClient:
    """A client for ``llmbrick.v1.FlowService``; one channel for every call.

    Use it as ``async with GrpcClient("host:50051") as client: ...``, or call
    :meth:`close` yourself. Whatever the server reports (an unknown flow, an
    invalid request, overload, a failure midway) is the stream's one terminal
    ``error`` event, as with ``FlowRuntime.run`` and the SSE and WebSocket
    clients. Only a call no llmbrick server answered (unreachable address, a
    client deadline before the first event) raises the matching
    :class:`llmbrick.LLMBrickError` (``Unavailable``, ``DeadlineExceeded``, ...).

    Args:
        address: ``host:port`` (any gRPC target string).
        timeout: default deadline in seconds for each call (``None``: none).
        credentials: TLS channel credentials; ``None`` connects in plaintext.
        metadata: metadata sent with every call (e.g. an authorization header).
        options: more channel arguments; one with the key of a default replaces it.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self._credentials = credentials
        self._options = tuple(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: flow_pb2_grpc.FlowServiceAsyncStub | None = None

    async def __aenter__(self) -> GrpcClient:
        self._flows()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel every call goes over (opened on first use)."""
        self._flows()
        assert self._channel is not None
        return self._channel

    def _flows(self) -> flow_pb2_grpc.FlowServiceAsyncStub:
        if self._stub is None:
            self._channel = open_channel(
                self.address, credentials=self._credentials, options=self._options
            )
            self._stub = flow_pb2_grpc.FlowServiceStub(self._channel)
        assert self._stub is not None
        return self._stub

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def stream(
        self,
        flow: str | None,
        request: Mapping[str, Any] | BaseModel,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> AsyncGenerator[Event]:
        """Run ``flow`` and yield its events; the last one has type ``done`` or ``error``.

        Closing the generator early (``break`` inside ``aclosing``) cancels the
        call, which cancels the flow on the server.

        Args:
            flow: the flow's name; ``None`` takes ``request["flow"]`` or ``default``.
            request: the request (a dict as an SSE client would POST, or a model).
            timeout: deadline in seconds for the whole stream; ``None``: the client's.

        Raises:
            LLMBrickError: no llmbrick server answered (the subclass names the code).
        """
        call = self._flows().Stream(
            encode_request(_payload(flow, request)),
            timeout=self._deadline(timeout),
            metadata=self.metadata,
        )
        received = 0
        ended = False
        try:
            async for response in call:
                for message in response.events:
                    event = decode_event(message)
                    received += 1
                    ended = event["type"] == "done" or event["type"] == "error"
                    yield event
        except grpc.aio.AioRpcError as exc:
            if ended:
                return  # the terminal error event already said it; this is its status
            answer = error_from_metadata(exc.trailing_metadata())
            if answer is None and received == 0:
                # No llmbrick server answered (unreachable, client deadline): an exception,
                # as a refused connection is for the SSE and WebSocket clients.
                raise exception_for(error_info(exc)) from None
            # The server refused the stream, or the call broke mid-stream: one terminal
            # error event, exactly as FlowRuntime.run and the other clients report it.
            info = answer or error_info(exc)
            yield {"type": "error", "error": info, "id": str(received + 1), "progress": "ERROR"}
        finally:
            call.cancel()

    async def invoke(
        self,
        flow: str | None,
        request: Mapping[str, Any] | BaseModel,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> InvokeResult:
        """Run ``flow`` to its end: ``{events, text, error}`` like ``FlowRuntime.invoke``.

        It streams and collects, so a flow failing midway still returns the events
        it produced, with ``error`` set.

        Raises:
            LLMBrickError: no llmbrick server answered.
        """
        events: list[Event] = []
        async for event in self.stream(flow, request, timeout=timeout):
            events.append(event)
        return collect_events(events)

    async def invoke_unary(
        self,
        flow: str | None,
        request: Mapping[str, Any] | BaseModel,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> InvokeResult:
        """Run ``flow`` with the unary ``Invoke`` call (one response message).

        Raises:
            LLMBrickError: the flow could not start, or failed (the events are lost).
        """
        try:
            response = await self._flows().Invoke(
                encode_request(_payload(flow, request)),
                timeout=self._deadline(timeout),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise exception_for(error_info(exc)) from None
        events = [decode_event(message) for message in response.events]
        return {"events": events, "text": response.text, "error": None}

    async def list_flows(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> list[dict[str, Any]]:
        """The server's flows: ``[{name, description, requestSchema}]``, like ``GET /flows``."""
        try:
            response = await self._flows().ListFlows(
                flow_pb2.ListFlowsRequest(),
                timeout=self._deadline(timeout),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise exception_for(error_info(exc)) from None
        return [decode_flow_info(item) for item in response.flows]
