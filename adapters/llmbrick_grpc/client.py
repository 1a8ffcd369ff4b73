"""``GrpcClient``: call an llmbrick gRPC server from Python over one reused channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from llmbrick import Cancelled, DeadlineExceeded, Event, LLMBrickError, Unavailable
from llmbrick.client import EventStream, FlowClient, FlowRequest, build_payload, exception_for
from llmbrick.stream import InvokeResult

from ._generated import flow_pb2, flow_pb2_grpc
from ._options import merge_options
from .codec import code_for, decode_event, decode_flow_info, encode_request, error_from_metadata

__all__ = ["GrpcClient", "channel_options", "open_channel", "tls_credentials"]

# Statuses a call ends with, without llmbrick's trailer, when no llmbrick server
# answered it: nothing reachable (UNAVAILABLE), or a gRPC server without our service.
_UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED})


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


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files.

    Args:
        ca_file: the CAs to trust (``None``: gRPC's default roots).
        cert_file, key_file: a client certificate and its key, for servers that
            require one (mutual TLS); give both or neither.

    Raises:
        ValueError: only one of ``cert_file`` and ``key_file``.
        OSError: a file cannot be read.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("mutual TLS needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file is not None else None,
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )


class GrpcClient(FlowClient):
    """A client for ``llmbrick.v1.FlowService``; one channel, opened on first use, for every call.

    Use it as ``async with GrpcClient("host:50051") as client: ...``, or call
    :meth:`aclose` (or :meth:`close`) yourself.

    Errors follow the policy of :class:`llmbrick.client.FlowClient`:

    * ``Unavailable`` is raised, with gRPC's ``AioRpcError`` as ``__cause__``,
      when no llmbrick server answered: nothing listens, the name does not
      resolve, the TLS handshake fails (an unknown CA, no client certificate
      for a server that requires one), the deadline passes before a connection
      is up, a gRPC server without llmbrick's service, or the connection lost
      before the first event.
    * What the server reported (its status with llmbrick's ``llmbrick-error-bin``
      trailer: unknown flow, invalid request, wrong API key, overload, a flow
      failing midway) is the stream's one terminal ``error`` event, as with
      ``FlowRuntime.run`` and the SSE and WebSocket clients. So is a call broken
      after the first event (``UNAVAILABLE``) and the deadline passing while the
      server runs the stream (``DEADLINE_EXCEEDED``; the server cancels the flow).

    Args:
        address: ``host:port`` (any gRPC target string).
        api_key: sent as ``authorization: Bearer <key>`` metadata.
        headers: metadata sent with every call (the flows see it as headers).
        timeout: the default deadline of each call, in seconds (``None``: none).
        tls: connect with TLS, trusting gRPC's default roots unless ``ca_file``
            says otherwise; implied by ``ca_file`` and ``cert_file``.
        ca_file: a PEM file of the CAs to trust (a private CA).
        cert_file, key_file: a client certificate and its key (mutual TLS).
        credentials: channel credentials built by hand, instead of the files.
        metadata: more metadata, as pairs (kept for callers of earlier versions).
        options: more channel arguments; one with the key of a default replaces it.
    """

    transport = "gRPC"

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            api_key=api_key, headers={**dict(metadata), **(headers or {})}, timeout=timeout
        )
        if credentials is None and (tls or ca_file is not None or cert_file is not None):
            credentials = tls_credentials(ca_file, cert_file, key_file)
        elif credentials is not None and (ca_file or cert_file or key_file):
            raise ValueError("give either credentials= or the TLS files, not both")
        self.address = address
        #: The metadata every call carries: ``headers`` and the API key's.
        self.metadata: tuple[tuple[str, str], ...] = tuple(self.headers.items())
        self._credentials = credentials
        self._options = tuple(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: flow_pb2_grpc.FlowServiceAsyncStub | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel every call goes over (opened on first use)."""
        self._flows()
        assert self._channel is not None
        return self._channel

    def _flows(self) -> flow_pb2_grpc.FlowServiceAsyncStub:
        self._check_open()
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
        """Close the channel; calls still running end with a ``CANCELLED`` event."""
        await self.aclose()

    async def _close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def stream(
        self,
        flow: str | None,
        request: FlowRequest,
        *,
        timeout: float | None = None,
    ) -> EventStream:
        """Run ``flow`` and yield its events; the last one has type ``done`` or ``error``.

        Closing the stream early (``aclose()``, or ``break`` inside ``aclosing``)
        cancels the call, which cancels the flow on the server.

        Args:
            flow: the flow's name; ``None`` takes ``request["flow"]`` or ``default``.
            request: the request (a dict as an SSE client would POST, or a model).
            timeout: deadline in seconds for the whole stream; ``None``: the client's.

        Raises:
            Unavailable: (while iterating) no llmbrick server answered.
        """
        return self._guard(self._events(build_payload(flow, request), self._deadline(timeout)))

    def resume(
        self,
        stream_id: str,
        after: int = 0,
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """The events of a kept stream after ``after``: ``FlowService.Resume``
        (see :meth:`FlowClient.resume`)."""
        request = flow_pb2.ResumeRequest(stream_id=stream_id, after=after)
        if token is not None:
            request.token = token
        deadline = self._deadline(timeout)
        return self._guard(
            self._events(
                None,
                deadline,
                lambda: self._flows().Resume(request, timeout=deadline, metadata=self.metadata),
            )
        )

    async def cancel(
        self,
        stream_id: str,
        *,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> None:
        """``FlowService.Cancel`` (see :meth:`FlowClient.cancel`)."""
        self._check_open()
        request = flow_pb2.CancelRequest(stream_id=stream_id)
        if token is not None:
            request.token = token
        try:
            await self._flows().Cancel(
                request, timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.aio.AioRpcError as exc:
            error = error_from_metadata(exc.trailing_metadata())
            if error is None:
                raise self._failure(exc) from exc
            raise exception_for(error) from exc

    async def _events(
        self,
        payload: dict[str, Any] | None,
        deadline: float | None,
        open_call: Callable[[], Any] | None = None,
    ) -> AsyncGenerator[Event]:
        if open_call is None:
            assert payload is not None
            call = self._flows().Stream(
                encode_request(payload), timeout=deadline, metadata=self.metadata
            )
        else:
            call = open_call()
        try:
            async for response in call:
                for message in response.events:
                    yield decode_event(message)
        except grpc.aio.AioRpcError as exc:
            error = error_from_metadata(exc.trailing_metadata())
            if error is None:
                raise self._failure(exc) from exc
            # The server's own report (a refused start, or a stream it ended with a status
            # alone): the stream's terminal event. A terminal event it already sent as a
            # message ended the iteration above, so this one is never a second.
            yield {"type": "error", "error": error}
        except asyncio.CancelledError as exc:
            # grpc.aio raises CancelledError, not a status, from a call that closing the
            # channel cancelled; a cancel of this task itself must go on as it is.
            task = asyncio.current_task()
            if not self._closed or (task is not None and task.cancelling()):
                raise
            raise Cancelled("the client was closed") from exc
        finally:
            call.cancel()

    def _failure(self, exc: grpc.aio.AioRpcError) -> LLMBrickError:
        """What a call that ended without llmbrick's trailer means (see the class docstring)."""
        status = exc.code()
        what = f"{status.name}: {exc.details() or 'no details'}"
        if status in _UNREACHED:
            return Unavailable(f"no llmbrick gRPC server answered at {self.address}: {what}")
        if status is grpc.StatusCode.DEADLINE_EXCEEDED:
            if not self._connected():
                return Unavailable(f"could not reach {self.address} before the deadline: {what}")
            return DeadlineExceeded(f"the call's deadline passed: {what}")
        if status is grpc.StatusCode.CANCELLED:
            return Cancelled(f"the call was cancelled: {what}")
        return LLMBrickError(f"the gRPC call failed: {what}", code=code_for(status))

    def _connected(self) -> bool:
        channel = self._channel
        ready = grpc.ChannelConnectivity.READY
        return channel is not None and channel.get_state(try_to_connect=False) is ready

    async def invoke(
        self,
        flow: str | None,
        request: FlowRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> InvokeResult:
        """Run ``flow`` to its end: ``{events, text, error}`` like ``FlowRuntime.invoke``.

        It streams and collects, so a flow failing midway still returns the events
        it produced, with ``error`` set.

        Raises:
            Unavailable: no llmbrick server answered.
        """
        return await self._collect(self.stream(flow, request, timeout=timeout))

    async def invoke_unary(
        self,
        flow: str | None,
        request: FlowRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> InvokeResult:
        """Run ``flow`` with the unary ``Invoke`` call (one response message).

        A flow that fails loses its events: ``events`` is then the one terminal
        ``error`` event, and ``error`` is set.

        Raises:
            Unavailable: no llmbrick server answered.
        """
        try:
            response = await self._flows().Invoke(
                encode_request(build_payload(flow, request)),
                timeout=self._deadline(timeout),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            error = error_from_metadata(exc.trailing_metadata())
            if error is None:
                failure = self._failure(exc)
                if isinstance(failure, Unavailable):
                    raise failure from exc
                error = failure.to_info()
            return {"events": [self.error_event(error)], "text": "", "error": error}
        events = [decode_event(message) for message in response.events]
        return {"events": events, "text": response.text, "error": None}

    async def list_flows(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline the server sees
    ) -> list[dict[str, Any]]:
        """The server's flows: ``[{name, description, requestSchema}]``, like ``GET /flows``.

        Raises:
            Unavailable: no llmbrick server answered.
            LLMBrickError: the server refused (``Unauthenticated``, ...) or the deadline passed.
        """
        try:
            response = await self._flows().ListFlows(
                flow_pb2.ListFlowsRequest(),
                timeout=self._deadline(timeout),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as exc:
            error = error_from_metadata(exc.trailing_metadata())
            if error is not None:
                raise exception_for(error) from exc
            raise self._failure(exc) from exc
        return [decode_flow_info(item) for item in response.flows]
