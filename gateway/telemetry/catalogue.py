"""The metric catalogue: every name, type, unit, tag key and enum-like tag value, declared once.

Every name is ``<component>.<what>`` without the namespace; DogStatsD prepends it
(``request.count`` → ``rag.request.count``) and Prometheus joins it with underscores in base units
(see :mod:`gateway.telemetry.prometheus`). The Datadog dashboard, the monitors,
``docs/observability.md`` and ``/metrics`` are all checked against it.

Tag values are bounded by construction: routes are canonical patterns (``/v1/query``, never a raw
path; unknown routes become ``unmatched``), everything else comes from small enums.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.contract import Component, Mode, Reason, StreamOutcome

MetricType = Literal["count", "gauge", "distribution", "histogram"]
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
# A route we were not told about (a 404 scanner's paths) must not mint new series.
UNMATCHED_ROUTE = "unmatched"
MAX_SERIES_PER_METRIC = 2000


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name`` without namespace, its type, unit, tag keys and meaning.

    ``values`` lists the allowed values of enum-like tags (the dashboard/monitor test checks
    every filter against it). ``plotted=False`` needs ``unplotted_reason``: the dashboard test
    accepts a catalogue metric missing from the dashboard only with a stated reason.
    """

    name: str
    type: MetricType
    unit: str
    tags: tuple[str, ...]
    description: str
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plotted: bool = True
    unplotted_reason: str = ""

    def datadog_name(self, namespace: str = "rag") -> str:
        return f"{namespace}.{self.name}" if namespace else self.name

    def prometheus_name(self, namespace: str = "rag") -> str:
        """The family name in base units, as Prometheus' naming rules ask: durations in seconds
        (``_seconds``; ms values are divided by 1000 at exposition), counters exposed with ``_total``."""
        base = self.name.replace(".", "_")
        suffix = {"ms": "_seconds", "seconds": "_seconds"}.get(self.unit, "")
        if suffix and not base.endswith(suffix):
            base += suffix
        return f"{namespace}_{base}" if namespace else base


# `mode` is what the client was told (X-RAG-Mode): query modes, /v1/messages' fallback_model, and
# `none` when no answer was made (probes, 4xx).
MODES = (*(m.value for m in Mode), "none")
# Rungs of the ladder (degradations[].component) and why they failed or were skipped.
COMPONENTS = tuple(c.value for c in Component)
OUTCOMES = ("success", "timeout", "error", "rate_limited", "overloaded", "caller_error", "cancelled", "shed",
            "caller_timeout", "queued_timeout")
STREAM_OUTCOMES = tuple(o.value for o in StreamOutcome)
FAILURE_REASONS = ("breaker_open", "timeout", "rate_limited", "error", "shed", "overloaded")
DEGRADATION_REASONS = tuple(r.value for r in Reason)
BREAKER_STATES = tuple(BREAKER_STATE_VALUES)

REQUEST_COUNT = MetricSpec(
    "request.count", "count", "requests", ("route", "status", "status_class", "mode", "degraded"),
    "Requests answered, by canonical route, HTTP status, status class (2xx…5xx), answer mode "
    "(`none` when no pipeline ran) and whether the answer was degraded.",
    values={"status_class": ("1xx", "2xx", "3xx", "4xx", "5xx"), "mode": MODES, "degraded": ("true", "false")})
REQUEST_DURATION = MetricSpec(
    "request.duration", "distribution", "ms", ("route", "mode"),
    "Time from the first middleware to the response, per route and answer mode.", values={"mode": MODES})
REQUEST_IN_FLIGHT = MetricSpec(
    "request.in_flight", "gauge", "requests", (),
    "Requests being served right now (sent every flush).")
RATE_LIMITED = MetricSpec(
    "rate_limit.rejected", "count", "requests", ("route",),
    "Requests refused with 429 by the per-client token bucket.")
DEGRADATION_COUNT = MetricSpec(
    "degradation.count", "count", "events", ("component", "reason"),
    "Rungs of the ladder that failed or were skipped, by component and reason (a stale cached answer "
    "is answer_cache/stale_answer here and also `rag.cache.results{result:stale_serve}`).",
    values={"component": COMPONENTS, "reason": DEGRADATION_REASONS})
DEPENDENCY_ATTEMPTS = MetricSpec(
    "dependency.attempts", "count", "attempts", ("dependency", "outcome"),
    "Upstream attempts made by a guard, by how each ended.", values={"outcome": OUTCOMES})
DEPENDENCY_DURATION = MetricSpec(
    "dependency.duration", "distribution", "ms", ("dependency", "outcome"),
    "Duration of one upstream attempt (bulkhead wait included).", values={"outcome": OUTCOMES})
DEPENDENCY_RETRIES = MetricSpec(
    "dependency.retries", "count", "retries", ("dependency", "reason"),
    "Retries started by a guard, by the failure that caused them.", values={"reason": FAILURE_REASONS})
DEPENDENCY_SHED = MetricSpec(
    "dependency.shed", "count", "calls", ("dependency",),
    "Calls refused by a full bulkhead (max concurrent calls reached, queue wait exceeded).")
DEPENDENCY_SHORT_CIRCUITS = MetricSpec(
    "dependency.short_circuits", "count", "calls", ("dependency",),
    "Calls refused at once by an open (or saturated half-open) breaker.")
BREAKER_STATE = MetricSpec(
    "breaker.state", "gauge", "state", ("dependency",),
    "Circuit breaker state: 0 closed, 1 half-open, 2 open (sent every flush).")
BREAKER_OPEN_FOR = MetricSpec(
    "breaker.open_for", "gauge", "seconds", ("dependency",),
    "Seconds since the breaker last left `closed` (0 while closed; sent every flush). Failed half-open "
    "probes do not reset it, so a hanging dependency keeps counting: the `breaker open for 5 minutes` "
    "monitor reads this, not the state gauge, which dips to half-open at every probe.")
BREAKER_TRANSITIONS = MetricSpec(
    "breaker.transitions", "count", "transitions", ("dependency", "from", "to"),
    "Breaker state changes.", values={"from": BREAKER_STATES, "to": BREAKER_STATES})
CACHE_RESULTS = MetricSpec(
    "cache.results", "count", "lookups", ("result",),
    "Answer cache outcomes: hit (fresh, served as mode=cached), miss, stale_serve "
    "(stale-if-error after the LLM failed), error.", values={"result": ("hit", "miss", "stale_serve", "error")})
KEYWORD_DURATION = MetricSpec(
    "keyword_fallback.duration", "distribution", "ms", (),
    "Time of one BM25 keyword-index search (the retrieval fallback).")
KEYWORD_SEARCHES = MetricSpec(
    "keyword_fallback.searches", "count", "searches", ("result",),
    "Keyword-fallback searches; `found` = at least one chunk.", values={"result": ("found", "empty")})
KB_INFO = MetricSpec(
    "kb.info", "gauge", "info", ("kb_version",),
    "Always 1, tagged with the active KB version (sent every flush).")
KB_AGE = MetricSpec(
    "kb.age", "gauge", "seconds", (),
    "Age of the active KB version since it was built (sent every flush).")
KB_CHUNKS = MetricSpec(
    "kb.chunks", "gauge", "chunks", (),
    "Chunks in the active KB version.")
JOB_OUTCOMES = ("ok", "degraded", "failed", "duplicate", "cancelled")
JOBS_SUBMITTED = MetricSpec(
    "jobs.submitted", "count", "queries", (),
    "Queries accepted into the job queue (POST /v1/jobs → 202).")
JOBS_REJECTED = MetricSpec(
    "jobs.rejected", "count", "jobs", ("reason",),
    "Job submissions refused with 429 because the client's unfinished queries hit the quota.",
    values={"reason": ("quota",)})
JOBS_ITEMS = MetricSpec(
    "jobs.items", "count", "queries", ("outcome",),
    "Job queries finished by this replica (its throughput): ok, degraded (answer stored with its "
    "degradations), failed (no answer after the retries), duplicate (a re-run whose result was already "
    "stored: discarded), cancelled.", values={"outcome": JOB_OUTCOMES})
JOBS_ITEM_DURATION = MetricSpec(
    "jobs.item.duration", "distribution", "ms", ("outcome",),
    "Time of the last attempt at one job query, background-priority waits included.",
    values={"outcome": JOB_OUTCOMES})
JOBS_RETRIES = MetricSpec(
    "jobs.retries", "count", "retries", ("reason",),
    "Job queries given back to the queue for a later attempt (backoff with jitter).",
    values={"reason": ("degraded", "unavailable", "error")})
JOBS_QUEUE_DEPTH = MetricSpec(
    "jobs.queue.depth", "gauge", "queries", (),
    "Job queries waiting to run (queued or waiting for a retry); with Redis, the shared queue (sent every flush).")
JOBS_QUEUE_IN_FLIGHT = MetricSpec(
    "jobs.queue.in_flight", "gauge", "queries", (),
    "Job queries claimed by a worker and not finished (sent every flush).")
JOBS_QUEUE_OLDEST_AGE = MetricSpec(
    "jobs.queue.oldest_age", "gauge", "seconds", (),
    "Age of the oldest waiting job query (since its job was submitted); 0 when the queue is empty.")
JOBS_WEBHOOKS = MetricSpec(
    "jobs.webhooks", "count", "deliveries", ("outcome",),
    "Completion webhook attempts: delivered (2xx), retry (will be retried with backoff), failed (given up).",
    values={"outcome": ("delivered", "retry", "failed")})
# Golden-set measures of the normal retrieval path, as `rag-sidecar eval` names them (precision@5 …).
QUALITY_MEASURES = ("precision_at_5", "recall_at_5", "ndcg_at_10", "mrr")
RETRIEVAL_QUALITY = MetricSpec(
    "kb.retrieval_quality", "gauge", "ratio", ("measure",),
    "Retrieval quality of the active KB version on its golden set (0..1; precision_at_5 is the seed "
    "article's Precision@5), from the last evaluation stored in the version's manifest (`evaluation`); "
    "refreshed whenever a version is loaded or activated, absent when the version was never evaluated.",
    values={"measure": QUALITY_MEASURES})
LLM_FIRST_TOKEN = MetricSpec(
    "llm.first_token", "distribution", "ms", ("model",),
    "/v1/messages streams: time from the request to the first content sent to the client, by the model "
    "that answered (with `llm.stream_buffer: full`, to the whole answer).")
LLM_STREAMS = MetricSpec(
    "llm.streams", "count", "streams", ("model", "outcome"),
    "/v1/messages streams by how they ended: complete, or cut / stalled / malformed / no_stop / error / "
    "timeout after content was sent (the client got an `event: error`), or the client's own: client_gone "
    "(it left) / client_slow (it did not read; closed by llm.client_idle_timeout_s or llm.stream_max_s).",
    values={"outcome": STREAM_OUTCOMES})

CATALOGUE: tuple[MetricSpec, ...] = (
    REQUEST_COUNT, REQUEST_DURATION, REQUEST_IN_FLIGHT, RATE_LIMITED, DEGRADATION_COUNT,
    DEPENDENCY_ATTEMPTS, DEPENDENCY_DURATION, DEPENDENCY_RETRIES, DEPENDENCY_SHED, DEPENDENCY_SHORT_CIRCUITS,
    BREAKER_STATE, BREAKER_TRANSITIONS, CACHE_RESULTS, KEYWORD_DURATION, KEYWORD_SEARCHES,
    KB_INFO, KB_AGE, KB_CHUNKS,
    JOBS_SUBMITTED, JOBS_REJECTED, JOBS_ITEMS, JOBS_ITEM_DURATION, JOBS_RETRIES, JOBS_QUEUE_DEPTH,
    JOBS_QUEUE_IN_FLIGHT, JOBS_QUEUE_OLDEST_AGE, JOBS_WEBHOOKS, BREAKER_OPEN_FOR, RETRIEVAL_QUALITY,
    LLM_FIRST_TOKEN, LLM_STREAMS,
)
# Slot of each metric in the per-catalogue lists below (the request path indexes, never looks up).
_REQ_COUNT, _REQ_DURATION, _IN_FLIGHT, _RATE_LIMITED, _DEGRADATION = map(CATALOGUE.index, (
    REQUEST_COUNT, REQUEST_DURATION, REQUEST_IN_FLIGHT, RATE_LIMITED, DEGRADATION_COUNT))
_DEP_ATTEMPTS, _DEP_DURATION, _DEP_RETRIES, _DEP_SHED, _DEP_SHORT = map(CATALOGUE.index, (
    DEPENDENCY_ATTEMPTS, DEPENDENCY_DURATION, DEPENDENCY_RETRIES, DEPENDENCY_SHED, DEPENDENCY_SHORT_CIRCUITS))
_BREAKER_STATE, _BREAKER_TRANSITIONS, _CACHE, _KW_DURATION, _KW_SEARCHES = map(CATALOGUE.index, (
    BREAKER_STATE, BREAKER_TRANSITIONS, CACHE_RESULTS, KEYWORD_DURATION, KEYWORD_SEARCHES))
_KB_INFO, _KB_AGE, _KB_CHUNKS, _BREAKER_OPEN_FOR, _QUALITY = map(CATALOGUE.index, (
    KB_INFO, KB_AGE, KB_CHUNKS, BREAKER_OPEN_FOR, RETRIEVAL_QUALITY))
_JOBS = {spec.name: CATALOGUE.index(spec) for spec in CATALOGUE if spec.name.startswith("jobs.")}
_LLM_FIRST_TOKEN, _LLM_STREAMS = map(CATALOGUE.index, (LLM_FIRST_TOKEN, LLM_STREAMS))
_SAMPLED = frozenset(i for i, s in enumerate(CATALOGUE) if s.type in ("distribution", "histogram"))
_COUNTED = frozenset(i for i, s in enumerate(CATALOGUE) if s.type == "count")
# Every count slot records a list per key (its length is the count); in these the values are
# durations that feed the paired distribution (one update per call instead of two).
_RECORDED = {_REQ_COUNT: _REQ_DURATION, _DEP_ATTEMPTS: _DEP_DURATION, _KW_SEARCHES: _KW_DURATION}


def _expand(pending: list[dict[tuple[Any, ...], Any]]) -> None:
    """Recorded lists → counts (their lengths) and samples, in place."""
    for count_index, sample_index in _RECORDED.items():
        samples = pending[sample_index]
        for key, values in pending[count_index].items():
            if count_index == _REQ_COUNT:  # (route, status, mode, degraded) → duration by (route, mode)
                skey: tuple[Any, ...] = (key[0], key[2])
            elif count_index == _KW_SEARCHES:  # (result,) → duration untagged
                skey = ()
            else:
                skey = key
            samples[skey] = samples[skey] + values if skey in samples else values
    for index in _COUNTED:
        pending[index] = {key: len(values) for key, values in pending[index].items()}


# Datadog's tag charset (datadog.util.format): anything else becomes "_". Applied here so that
# Prometheus labels carry exactly the values Datadog shows.
_TAG_INVALID = re.compile(r"[^\w\-:/.]")


def _tag_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _TAG_INVALID.sub("_", str(value))


def _label_values(index: int, raw: tuple[Any, ...]) -> tuple[str, ...]:
    """The tag values of a series from the raw key the request path stored."""
    if index == _REQ_COUNT:  # raw: (route, status, mode, degraded) → status_class derived here
        route, status, mode, degraded = raw
        return (_tag_value(route), str(status), f"{int(status) // 100}xx", _tag_value(mode), _tag_value(degraded))
    return tuple(_tag_value(v) for v in raw)


def route_tag(canonical: str) -> str:
    """``/admin/breakers/{name}/{action}`` → ``/admin/breakers/:name/:action`` (braces are not tag-safe)."""
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", r":\1", canonical)


def undeclared(index: int, labels: tuple[str, ...]) -> list[str]:
    """``key:value`` pairs of a series whose tag key declares its values and does not declare this one."""
    spec = CATALOGUE[index]
    return [f"{key}:{value}" for key, value in zip(spec.tags, labels)
            if key in spec.values and value not in spec.values[key]]


def quality_measures(evaluation: Any) -> dict[str, float]:
    """``measure → value`` from a manifest's ``evaluation`` (``{"normal": {"precision@5": …}, …}`` as
    ``rag-sidecar eval --json`` writes it, or the measures at the top level); {} when absent or unusable."""
    if not isinstance(evaluation, dict):
        return {}
    normal = evaluation.get("normal")
    source: dict[Any, Any] = normal if isinstance(normal, dict) else evaluation
    out = {}
    for key, value in source.items():
        name = str(key).replace("@", "_at_")
        if name in QUALITY_MEASURES and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and 0.0 <= value <= 1.0:
            out[name] = float(value)
    return out
