"""The contract between the shared HTTP endpoint and its wire formats (codecs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmbrick import ErrorCode, ErrorInfo, Event

if TYPE_CHECKING:
    from llmbrick import FlowRuntime
    from llmbrick.context import Headers
    from llmbrick.stream import FlowStream, InvokeResult

__all__ = ["MAX_ECHO", "FrameWriter", "HttpCodec", "Opening", "Rejected"]

#: How much of a client's input an error message may quote.
MAX_ECHO = 64


class Rejected(Exception):
    """Ends a request before any stream starts, with an HTTP status and an error."""

    def __init__(
        self, status: int, error: ErrorInfo, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(error["message"])
        self.status = status
        self.error = error
        self.headers = headers

    @classmethod
    def invalid(cls, status: int, message: str, *headers: tuple[bytes, bytes]) -> Rejected:
        """An ``INVALID_ARGUMENT`` refusal with ``status``."""
        return cls(status, {"code": ErrorCode.INVALID_ARGUMENT.value, "message": message}, headers)


@dataclass(slots=True)
class Opening:
    """What a codec read from a request: which flow, with what, streamed or not.

    Attributes:
        flow: the flow's name (``None``: the runtime takes it from the payload).
        payload: what the flow's request model is validated against.
        streaming: stream frames (True) or answer one document (False).
        options: whatever else the codec needs later (e.g. OpenAI's include_usage).
        detached: start the stream and answer at once with where to follow it
            (``POST /streams``); the flow runs on under its disconnect policy.
        tag: what a client can find the kept stream by later (the request
            context's ``tag``).
    """

    flow: str | None
    payload: Any
    streaming: bool
    options: dict[str, Any] = field(default_factory=dict)
    detached: bool = False
    tag: str | None = None


class FrameWriter(Protocol):
    """Encodes one stream's events; a codec may keep per-stream state (chunk ids, tool calls)."""

    def encode(self, event: Event) -> bytes:
        """The bytes for ``event`` (empty: nothing to send for it)."""
        ...

    def close(self) -> bytes:
        """Bytes that end the stream after its terminal event (e.g. ``data: [DONE]``)."""
        ...


class HttpCodec(Protocol):
    """One wire format on :class:`StreamEndpoint`; pure (no I/O)."""

    #: The transport label in logs and metrics (``"sse"``, ``"openai"``, ``"ui"``).
    transport: str
    #: Headers of a streaming response.
    stream_headers: list[tuple[bytes, bytes]]
    #: A keepalive frame the client ignores.
    ping: bytes

    def open(self, body: Any, headers: Headers, runtime: FlowRuntime) -> Opening:
        """Read a request body (already JSON-decoded).

        Raises:
            Rejected: the body is not a request of this API.
            LLMBrickError: e.g. an unknown flow or model.
        """
        ...

    def writer(self, stream: FlowStream, opening: Opening) -> FrameWriter:
        """The frame writer for one stream."""
        ...

    def document(self, result: InvokeResult, stream: FlowStream, opening: Opening) -> bytes:
        """The single JSON document of a non-streaming request."""
        ...

    def status_for(self, error: ErrorInfo) -> int:
        """The HTTP status of an error before the stream starts or of a failed document."""
        ...

    def error_body(self, error: ErrorInfo, status: int) -> bytes:
        """The JSON body of an error response."""
        ...
