"""Client-facing errors: always JSON ``{"error": {"type", "message", "field"}}``, never a stack trace."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def error_response(status: int, type_: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": type_, "message": message, "field": field}
    body.update(extra)
    return web.Response(status=status, text=json.dumps({"error": body}), content_type="application/json",
                        headers=headers)


class APIError(web.HTTPException):
    """Raise from handlers/middleware; rendered as the JSON error body with its status."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": {"type": type_, "message": message, "field": field}}),
                         content_type="application/json", headers=headers)
        self.error_type, self.field = type_, field
