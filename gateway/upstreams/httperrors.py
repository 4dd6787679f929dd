"""HTTP status → :class:`UpstreamError`, shared by the HTTP upstream clients.

One table of what is worth retrying: 408/409/429/5xx (incl. Anthropic's 529) are retryable; 400, 413
and 422 are the caller's fault (bad input: never trip a breaker); any other 4xx (401/403/404 …) is our
own misconfiguration — not retryable, but not the caller's fault either.
"""
from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Mapping

from resilience.errors import UpstreamError

RETRYABLE_4XX = frozenset({408, 409, 429})
CALLER_FAULT = frozenset({400, 413, 422})


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (ms, Anthropic/OpenAI) or ``retry-after`` (seconds or an
    HTTP date). None when absent or unparseable; never negative. ``now`` is a Unix time, for tests."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def error_for_status(status: int, message: str, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """The :class:`UpstreamError` for an HTTP error ``status`` (Retry-After parsed from ``headers``)."""
    retryable = status >= 500 or status in RETRYABLE_4XX
    return UpstreamError(message, status=status, retryable=retryable,
                         retry_after_s=parse_retry_after(headers) if retryable else None,
                         caller_fault=status in CALLER_FAULT)
