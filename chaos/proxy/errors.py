"""Toxiproxy's API errors: the same messages and status codes, so clients branch on them unchanged.

Toxiproxy answers every error as ``{"error": "<message>", "status": <code>}``; wrapped errors read
``"<message>: <detail>"`` (its ``joinError``).
"""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An API failure with the HTTP status Toxiproxy would send."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_request_body(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def missing_field(field: str) -> ApiError:
    return ApiError(f"missing required field: {field}", 400)


def proxy_not_found() -> ApiError:
    return ApiError("proxy not found", 404)


def proxy_already_exists() -> ApiError:
    return ApiError("proxy already exists", 409)


def invalid_stream() -> ApiError:
    return ApiError("stream was invalid, can be either upstream or downstream", 400)


def invalid_toxic_type() -> ApiError:
    return ApiError("invalid toxic type", 400)


def toxic_already_exists() -> ApiError:
    return ApiError("toxic already exists", 409)


def toxic_not_found() -> ApiError:
    return ApiError("toxic not found", 404)


def listen_failed(address: str, detail: str) -> ApiError:
    # Toxiproxy passes Go's net.Listen error through untyped, which its API turns into a 500.
    return ApiError(f"listen tcp {address}: {detail}", 500)
