"""Completion webhooks: signed like Stripe's, retried with exponential backoff and full jitter.

Every delivery is a POST of JSON with these headers::

    X-RAG-Signature: t=1764523200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
    X-RAG-Webhook-Id: <job id>         (the same on every retry: deduplicate on it)
    X-RAG-Delivery-Attempt: 1, 2, …

``v1`` is ``hex(HMAC-SHA256(jobs.webhook_secret, f"{t}.{raw body}"))``. To verify, a receiver
recomputes it over the *raw* body bytes (before any JSON parsing), compares in constant time, and
rejects a ``t`` older than its tolerance (5 minutes here) so a captured request cannot be
replayed later. :func:`verify_signature` does exactly that and is what our tests use.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from typing import Any

SIGNATURE_HEADER = "X-RAG-Signature"
WEBHOOK_ID_HEADER = "X-RAG-Webhook-Id"
ATTEMPT_HEADER = "X-RAG-Delivery-Attempt"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The signature header is missing, malformed, wrong, or too old."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-RAG-Signature`` header value for ``body`` (raw bytes) at ``timestamp`` (unix seconds)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, header: str | None, body: bytes, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
                     now: float | None = None) -> int:
    """Check ``header`` against the raw ``body``; returns the signed timestamp. Raises :class:`SignatureError`."""
    if not header:
        raise SignatureError("no signature header")
    parts: dict[str, list[str]] = {}
    for piece in header.split(","):
        key, sep, value = piece.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("no timestamp in the signature header") from None
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_s:
        raise SignatureError(f"timestamp outside the {tolerance_s:g} s tolerance (replay?)")
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, got) for got in parts.get("v1", [])):
        raise SignatureError("signature does not match")
    return t


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: float | None = None) -> float:
    """Full jitter (AWS): uniform in [0, min(cap, base * 2^(attempt-1))]; ``attempt`` ≥ 1."""
    r = random.random() if rand is None else rand
    return r * min(cap_s, base_s * (2 ** max(0, attempt - 1)))


def event_body(job_view: dict[str, Any]) -> bytes:
    """The payload: the event type and the job (progress, no results: fetch them from ``links.self``)."""
    event = {"type": f"job.{job_view['status']}", "created_at": int(time.time()), "job": job_view}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
