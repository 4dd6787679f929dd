"""The response contract: the one vocabulary every answer, header, metric, log line and chaos scenario uses.

Body (``/v1/query``, ``/v1/retrieve``, the 503 of an exhausted ladder)::

    {"answer", "mode", "degraded", "degradations": [{"component", "reason", ...}], "sources",
     "kb_version", "request_id", "timings_ms"} (+ "model", "answer_age_s", "chunks", "error", "vectors" when they apply)

Headers: ``X-Request-Id``, ``X-RAG-Mode``, ``X-RAG-Degraded: true|false``, ``Server-Timing`` (and
``X-RAG-Degradations`` on ``/v1/messages``, whose body is Anthropic's and cannot carry them), plus
``Retry-After`` (whole seconds) on a 503.

The enums are ``StrEnum``: a member *is* its string (``Mode.FULL == "full"``, ``json.dumps`` and
``str()`` give ``"full"``), so bodies, headers, logs and metric tags read exactly as plain strings.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from typing import Any


class Mode(StrEnum):
    """How an answer was made (``mode`` in the body, ``X-RAG-Mode``)."""

    FULL = "full"                          # every rung healthy (or only invisible retries)
    CACHED = "cached"                      # from the answer cache (fresh hit, or stale-if-error)
    KEYWORD_FALLBACK = "keyword_fallback"  # retrieved by the local keyword index, not the vector DB
    EXTRACTIVE = "extractive"              # sentences picked from the chunks, no LLM
    FALLBACK_MODEL = "fallback_model"      # /v1/messages: answered by llm.fallback_model
    UNAVAILABLE = "unavailable"            # nothing could answer: 503 (query) / 529 or 429 (messages)


# What each endpoint family can produce: the pipeline (/v1/query, /v1/retrieve) never answers with
# another model under this label (a fallback model's answer is `full` + an `llm` degradation there).
QUERY_MODES: tuple[Mode, ...] = (Mode.FULL, Mode.CACHED, Mode.KEYWORD_FALLBACK, Mode.EXTRACTIVE, Mode.UNAVAILABLE)
MESSAGES_MODES: tuple[Mode, ...] = (Mode.FULL, Mode.FALLBACK_MODEL, Mode.UNAVAILABLE)


class Component(StrEnum):
    """A rung of the ladder (``degradations[].component``; the guard names for the upstream ones)."""

    EMBEDDER = "embedder"
    VECTOR_DB = "vector_db"
    KEYWORD_INDEX = "keyword_index"
    LLM = "llm"                            # the requested (or configured) model
    LLM_FALLBACK = "llm_fallback"          # a model of its fallback chain
    LLM_CONTEXT_WINDOW = "llm_context_window"  # a larger-context model after "prompt is too long"
    ANSWER_CACHE = "answer_cache"
    KB = "kb"  # the served KB version is not (all of) the one ACTIVE names: it was damaged


class Reason(StrEnum):
    """Why a rung was skipped or failed (``degradations[].reason``, ``rag.degradation.count{reason}``).

    The first six are the guard's own (:class:`resilience.Reason`, re-declared here because
    ``resilience/`` must not depend on the gateway; a test keeps them equal).
    """

    BREAKER_OPEN = "breaker_open"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    ERROR = "error"
    SHED = "shed"
    OVERLOADED = "overloaded"
    STREAM_CUT = "stream_cut"      # a stream broke after text was sent
    # /v1/messages: a stream that ended badly after content reached the client (see StreamOutcome)
    STREAM_STALLED = "stream_stalled"
    STREAM_MALFORMED = "stream_malformed"
    STREAM_NO_STOP = "stream_no_stop"
    STREAM_ERROR = "stream_error"
    STREAM_TIMEOUT = "stream_timeout"
    CONTEXT_WINDOW = "context_window"    # the prompt was too long for the model: a larger one answered
    PREFILL_DROPPED = "prefill_dropped"  # the fallback refused an assistant prefill: replayed without it
    STALE = "stale"                # keyword index older than kb.stale_after_s
    STALE_ANSWER = "stale_answer"  # a cached answer past its TTL served after the LLM failed
    MISSING = "missing"            # no keyword index for the active KB version
    DISABLED = "disabled"          # the keyword fallback is switched off in the config
    FALLBACK_VERSION = "fallback_version"  # the active KB version failed verification: an older one answers
    KEYWORD_ONLY = "keyword_only"  # no KB version verified: only a keyword index answers


class StreamOutcome(StrEnum):
    """How a /v1/messages stream ended (``rag.llm.streams{outcome}``, logs, spans)."""

    COMPLETE = "complete"        # message_stop reached the client
    CUT = "cut"                  # the upstream connection broke after content was sent
    STALLED = "stalled"          # no event for llm.idle_timeout_s after content was sent
    MALFORMED = "malformed"      # an event's data was not JSON
    NO_STOP = "no_stop"          # the upstream ended cleanly but without message_stop
    ERROR = "error"              # the upstream sent its own `event: error` (forwarded as-is)
    TIMEOUT = "timeout"          # the stream outlived llm.stream_max_s
    CLIENT_GONE = "client_gone"  # the client disconnected
    # The client left sent events unread for llm.client_idle_timeout_s (its connection is closed), or its
    # backpressure pushed the stream past llm.stream_max_s: the client's problem, never the model's.
    CLIENT_SLOW = "client_slow"


# Outcomes caused by the client: no degradation, no `event: error`, not a broken stream of the model.
CLIENT_SIDE_OUTCOMES = frozenset({StreamOutcome.CLIENT_GONE, StreamOutcome.CLIENT_SLOW})


def reason_of(value: str | Enum) -> str:
    """The wire string of a reason given as a contract/guard enum member or a plain string."""
    return value.value if isinstance(value, Enum) else value


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1 (what RFC 9110 and every SDK parse)."""
    return str(max(1, math.ceil(seconds)))


def degradation(component: str | Enum, reason: str | Enum, **extra: Any) -> dict[str, Any]:
    """One ``degradations[]`` entry; ``extra`` keys whose value is None are left out."""
    entry: dict[str, Any] = {"component": reason_of(component), "reason": reason_of(reason)}
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def body(*, answer: str | None, mode: Mode, degradations: list[dict[str, Any]], sources: list[dict[str, Any]],
         kb_version: str | None, request_id: str, timings_ms: Mapping[str, float],
         chunks: list[dict[str, Any]] | None = None, model: str | None = None, answer_age_s: float | None = None,
         error: Mapping[str, Any] | None = None, vectors: str | None = None) -> dict[str, Any]:
    """The contract body. ``degraded`` is derived: any degradation, or no answer at all."""
    out: dict[str, Any] = {
        "answer": answer, "mode": mode, "degraded": is_degraded(mode, degradations), "degradations": degradations,
        "sources": sources,
    }
    if chunks is not None:
        out["chunks"] = chunks
    out.update(kb_version=kb_version, request_id=request_id, timings_ms=dict(timings_ms))
    if model:
        out["model"] = model
    if answer_age_s is not None:
        out["answer_age_s"] = round(answer_age_s, 3)
    if vectors is not None:  # which vector set answered (embedded store): quality | fast (gateway.progressive)
        out["vectors"] = vectors
    if error is not None:
        out["error"] = dict(error)
    return out


def is_degraded(mode: Mode, degradations: Iterable[Any]) -> bool:
    """``degraded``: any rung skipped or failed; an unavailable answer always is."""
    return mode is Mode.UNAVAILABLE or any(True for _ in degradations)


def headers(mode: Mode, *, degraded: bool, request_id: str, timings_ms: Mapping[str, float] | None = None,
            degradations: list[dict[str, Any]] | None = None, retry_after_s: float | None = None) -> dict[str, str]:
    """The ``X-RAG-*`` headers (+ ``Server-Timing`` from ``timings_ms``, ``X-RAG-Degradations`` when
    ``degradations`` is given and non-empty, ``Retry-After`` from ``retry_after_s``)."""
    out: dict[str, str] = {}
    if retry_after_s is not None:
        out["Retry-After"] = retry_after(retry_after_s)
    out["X-Request-Id"] = request_id
    out["X-RAG-Mode"] = mode.value
    out["X-RAG-Degraded"] = "true" if degraded else "false"
    if timings_ms is not None:
        out["Server-Timing"] = ", ".join(f"{k};dur={v:.1f}" for k, v in timings_ms.items())
    if degradations:
        out["X-RAG-Degradations"] = json.dumps(degradations)
    return out

