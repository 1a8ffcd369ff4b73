"""Turning a failed gRPC call back into the llmbrick exception the server raised."""

from __future__ import annotations

from typing import Any

import grpc

from llmbrick import (
    Cancelled,
    DeadlineExceeded,
    ErrorCode,
    ErrorInfo,
    FlowNotFound,
    InvalidRequest,
    LLMBrickError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

from .codec import code_for, error_from_metadata

__all__ = ["error_info", "exception_for"]

_CLASSES: dict[str, type[LLMBrickError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidRequest,
    ErrorCode.NOT_FOUND: FlowNotFound,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.CANCELLED: Cancelled,
}


def error_info(exc: grpc.aio.AioRpcError | grpc.RpcError) -> ErrorInfo:
    """The error of a failed call: the server's ``llmbrick-error-bin`` trailer, else its status."""
    trailing: Any = getattr(exc, "trailing_metadata", None)
    info = error_from_metadata(trailing() if callable(trailing) else None)
    if info is not None:
        return info
    status: Any = getattr(exc, "code", None)
    details: Any = getattr(exc, "details", None)
    code = status() if callable(status) else grpc.StatusCode.UNKNOWN
    message = details() if callable(details) else None
    return {"code": code_for(code), "message": message or code.name}


def exception_for(info: ErrorInfo) -> LLMBrickError:
    """The llmbrick exception for an error, of the class its code names when there is one."""
    code = info["code"]
    message = info["message"]
    details = info.get("details")
    if code == ErrorCode.RESOURCE_EXHAUSTED:
        retry = details.get("retryAfter") if isinstance(details, dict) else None
        return Overloaded(message, retry_after=retry if isinstance(retry, (int, float)) else 1.0)
    cls = _CLASSES.get(code)
    if cls is not None:
        return cls(message, details=details)
    try:
        return LLMBrickError(message, code=code, details=details)
    except ValueError:  # a code a flow made up: keep it in the details
        return LLMBrickError(message, details={"code": code, "details": details})
