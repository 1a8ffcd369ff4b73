"""Errors raised by llmbrick, each carrying a transport-neutral :class:`ErrorCode`.

Adapters never look at the exception class: they map ``exc.code`` to an HTTP
status, a WebSocket close code or a gRPC status with one small table each.

The tree::

    LLMBrickError                 root; code INTERNAL unless a subclass says otherwise
    ├── InvalidRequest            INVALID_ARGUMENT  expected: the client sent a bad request
    ├── FlowNotFound              NOT_FOUND         expected: no flow has that name
    ├── Overloaded                RESOURCE_EXHAUSTED expected: too many streams, retry later
    ├── DeadlineExceeded          DEADLINE_EXCEEDED expected: the flow ran past its timeout
    ├── PermissionDenied          PERMISSION_DENIED expected: e.g. a guard rejected the input
    ├── Unauthenticated           UNAUTHENTICATED   expected: credentials missing or wrong
    ├── Unavailable               UNAVAILABLE       expected: the server is shutting down
    ├── Cancelled                 CANCELLED         expected: the client cancelled the stream
    ├── DuplicateFlow (ValueError)      a programming error at registration time
    └── PipelineTypeError (TypeError)   a programming error at pipeline assembly time

Expected errors carry a message written for the client. Any other exception a
flow raises is a bug: the runtime logs it and sends only a generic ``INTERNAL``
message, unless debug mode is on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .events import ErrorInfo

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "DuplicateFlow",
    "ErrorCode",
    "FlowNotFound",
    "InvalidRequest",
    "LLMBrickError",
    "Overloaded",
    "PermissionDenied",
    "PipelineTypeError",
    "Unauthenticated",
    "Unavailable",
]


class ErrorCode(StrEnum):
    """Transport-neutral error codes; the names follow gRPC's canonical codes."""

    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class LLMBrickError(Exception):
    """Root of every llmbrick error.

    Args:
        message: text for the client (expected errors) or the log (bugs).
        code: overrides the class's default code.
        details: JSON-serialisable extra information for the client.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self, message: str, *, code: ErrorCode | str | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = ErrorCode(code)
        self.details = details

    def to_info(self) -> ErrorInfo:
        """Return the ``error`` object of an error event for this exception."""
        info: ErrorInfo = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            info["details"] = self.details
        return info


class InvalidRequest(LLMBrickError):
    """The request does not match the flow's request model (expected)."""

    code = ErrorCode.INVALID_ARGUMENT

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, *, what: str = "request"
    ) -> InvalidRequest:
        """Build one from a pydantic error, keeping each problem's field path."""
        details = [
            {
                "loc": ".".join(str(part) for part in err["loc"]) or "(root)",
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        first = details[0] if details else {"loc": "(root)", "message": "invalid"}
        count = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        message = f"invalid {what}: {first['loc']}: {first['message']}{count}"
        return cls(message, details=details)


class FlowNotFound(LLMBrickError):
    """No flow is registered under the requested name (expected)."""

    code = ErrorCode.NOT_FOUND


class Overloaded(LLMBrickError):
    """A limit is reached; retry after ``retry_after`` seconds (expected).

    ``limit`` says whose: ``"server"`` (the server runs all the streams it
    allows) or ``"caller"`` (this caller's own limits); HTTP answers the first
    with 503 and the second with 429.
    """

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after: float = 1.0, limit: str = "server") -> None:
        super().__init__(message, details={"retryAfter": retry_after, "limit": limit})
        self.retry_after = retry_after
        self.limit = limit


class DeadlineExceeded(LLMBrickError):
    """The flow ran past its timeout (expected)."""

    code = ErrorCode.DEADLINE_EXCEEDED


class PermissionDenied(LLMBrickError):
    """The request is not allowed, e.g. a guard brick rejected it (expected)."""

    code = ErrorCode.PERMISSION_DENIED


class Unauthenticated(LLMBrickError):
    """The request lacks valid credentials (expected)."""

    code = ErrorCode.UNAUTHENTICATED


class Unavailable(LLMBrickError):
    """The server is draining or shutting down (expected)."""

    code = ErrorCode.UNAVAILABLE


class Cancelled(LLMBrickError):
    """The client cancelled the stream (expected)."""

    code = ErrorCode.CANCELLED


class DuplicateFlow(LLMBrickError, ValueError):
    """A flow name was registered twice (a programming error)."""

    code = ErrorCode.ALREADY_EXISTS


class PipelineTypeError(LLMBrickError, TypeError):
    """A brick cannot accept what the previous brick produces (a programming error)."""

    code = ErrorCode.FAILED_PRECONDITION
