"""Turning a failed gRPC call back into the llmbrick error the server reported.

``exception_for`` is the core's (``llmbrick.client``), named here for the callers it had.
"""

from __future__ import annotations

from typing import Any

import grpc

from llmbrick import ErrorInfo
from llmbrick.client import exception_for

from .codec import code_for, error_from_metadata

__all__ = ["error_info", "exception_for"]


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
