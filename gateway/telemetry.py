"""Metrics: one catalogue, two sinks (DogStatsD and Prometheus).

:data:`CATALOGUE` is the single source of metric names. Every name is ``<component>.<what>``
without the namespace; DogStatsD prepends it (``request.count`` → ``rag.request.count``) and
Prometheus joins it with underscores, adding the unit suffix for ms/seconds
(``request.duration`` → ``rag_request_duration_ms``; counters get ``_total``). The Datadog
dashboard, the monitors, ``docs/observability.md`` and ``/metrics`` are all checked against it.

Cost on the request path: a dict update or a list append under a lock, nothing else (~0.2 µs per
metric). Calling DogStatsd per metric costs 0.7–1.5 µs even buffered (and 37 µs unbuffered), and
prometheus-client 0.3–0.7 µs, so a degraded request's ~20 metric updates cost 30–55 µs: 15–30 % of a
~190 µs pass-through request (bench/metrics_overhead.py). Instead an exporter thread wakes every
``flush_interval_s`` (1 s), sends one summed line per count series, the distribution values packed
many per line (DogStatsD protocol 1.1, Agent ≥ 6.25 / 7.25) and every gauge, through a buffered
``datadog.DogStatsd`` whose socket is non-blocking; Prometheus reads the same cumulative state at
scrape time. No agent listening → datagrams are dropped (one warning per 5 minutes).

Tag values are bounded by construction: routes are canonical patterns (``/v1/query``, never a raw
path; unknown routes become ``unmatched``), everything else comes from small enums.
"""
from __future__ import annotations

import contextvars

import logging
import math
import re
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            Metric)
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from gateway.config import TelemetryConfig

log = logging.getLogger("rag_sidecar.telemetry")
events = logging.getLogger("rag_sidecar.events")

MetricType = Literal["count", "gauge", "distribution", "histogram"]
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8"
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
# Latency buckets (ms) for the Prometheus histograms; Datadog distributions need none.
MS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
              60000.0)
# A route we were not told about (a 404 scanner's paths) must not mint new series.
UNMATCHED_ROUTE = "unmatched"
MAX_SERIES_PER_METRIC = 2000
# Distribution values per DogStatsD line ("name:v1:v2:…|d"); keeps a line well under a UDP packet.
VALUES_PER_LINE = 50

# Retries per dependency for the current request (set by the access-log middleware).
request_retries: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "request_retries", default=None)


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
        """The family name (counters are exposed with a ``_total`` sample suffix)."""
        base = self.name.replace(".", "_")
        suffix = {"ms": "_ms", "seconds": "_seconds"}.get(self.unit, "")
        if suffix and not base.endswith(suffix):
            base += suffix
        return f"{namespace}_{base}" if namespace else base


MODES = ("full", "cached", "keyword_fallback", "extractive", "retrieval_only", "unavailable", "none")
OUTCOMES = ("success", "timeout", "error", "rate_limited", "overloaded", "caller_error", "cancelled")
FAILURE_REASONS = ("breaker_open", "timeout", "rate_limited", "error", "shed", "overloaded")
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
    "is answer_cache/stale_answer here and also `rag.cache.results{result:stale_serve}`).")
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

CATALOGUE: tuple[MetricSpec, ...] = (
    REQUEST_COUNT, REQUEST_DURATION, REQUEST_IN_FLIGHT, RATE_LIMITED, DEGRADATION_COUNT,
    DEPENDENCY_ATTEMPTS, DEPENDENCY_DURATION, DEPENDENCY_RETRIES, DEPENDENCY_SHED, DEPENDENCY_SHORT_CIRCUITS,
    BREAKER_STATE, BREAKER_TRANSITIONS, CACHE_RESULTS, KEYWORD_DURATION, KEYWORD_SEARCHES,
    KB_INFO, KB_AGE, KB_CHUNKS,
)
# Slot of each metric in the per-catalogue lists below (the request path indexes, never looks up).
_REQ_COUNT, _REQ_DURATION, _IN_FLIGHT, _RATE_LIMITED, _DEGRADATION = map(CATALOGUE.index, (
    REQUEST_COUNT, REQUEST_DURATION, REQUEST_IN_FLIGHT, RATE_LIMITED, DEGRADATION_COUNT))
_DEP_ATTEMPTS, _DEP_DURATION, _DEP_RETRIES, _DEP_SHED, _DEP_SHORT = map(CATALOGUE.index, (
    DEPENDENCY_ATTEMPTS, DEPENDENCY_DURATION, DEPENDENCY_RETRIES, DEPENDENCY_SHED, DEPENDENCY_SHORT_CIRCUITS))
_BREAKER_STATE, _BREAKER_TRANSITIONS, _CACHE, _KW_DURATION, _KW_SEARCHES = map(CATALOGUE.index, (
    BREAKER_STATE, BREAKER_TRANSITIONS, CACHE_RESULTS, KEYWORD_DURATION, KEYWORD_SEARCHES))
_KB_INFO, _KB_AGE, _KB_CHUNKS = map(CATALOGUE.index, (KB_INFO, KB_AGE, KB_CHUNKS))
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
                skey = (key[0], key[2])
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


_bucket_of = partial(bisect_left, MS_BUCKETS)  # value (ms) → index of its Prometheus bucket
_VALUE_FORMATS = [("%.6g:" * n)[:-1] for n in range(VALUES_PER_LINE + 1)]  # one % per line, not per value


def route_tag(canonical: str) -> str:
    """``/admin/breakers/{name}/{action}`` → ``/admin/breakers/:name/:action`` (braces are not tag-safe)."""
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", r":\1", canonical)


class _OncePer(logging.Filter):
    """Let one record per message template through every ``interval_s`` (a missing agent makes
    DogStatsd warn on every send; one line per 5 minutes says the same)."""

    def __init__(self, interval_s: float = 300.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -math.inf) < self.interval_s:
            return False
        self._last[key] = now
        return True


_DOGSTATSD_LOG_FILTER = _OncePer()


def _make_statsd(config: "TelemetryConfig") -> Any:
    """A buffered DogStatsd, flushed only by our exporter thread; raises ConfigError on a bad URL."""
    from datadog.dogstatsd.base import DogStatsd

    from gateway.config import ConfigError

    host: str | None = None
    port: int | None = None
    socket_path: str | None = None
    if config.dogstatsd_url:
        parsed = urlparse(config.dogstatsd_url)
        if parsed.scheme in ("unix", "unixgram", "unixstream"):
            socket_path = config.dogstatsd_url  # DogStatsd strips the scheme and picks the socket kind
        elif parsed.scheme == "udp" and parsed.hostname:
            host, port = parsed.hostname, parsed.port or 8125
        else:
            raise ConfigError(f"telemetry.dogstatsd_url: expected udp://host:port or unix:///path, "
                              f"got {config.dogstatsd_url!r}")
    else:
        host, port = config.agent_host or "127.0.0.1", config.dogstatsd_port
    ours = [f"service:{config.service}"]
    if config.env:
        ours.insert(0, f"env:{config.env}")
    if config.version:
        ours.append(f"version:{config.version}")
    dd_log = logging.getLogger("datadog.dogstatsd")
    if _DOGSTATSD_LOG_FILTER not in dd_log.filters:
        dd_log.addFilter(_DOGSTATSD_LOG_FILTER)
    # flush_interval=0: no flush thread of its own; socket_timeout=0: a full socket drops, never waits.
    statsd = DogStatsd(host=host, port=port, socket_path=socket_path, namespace=config.namespace or None,
                       constant_tags=list(ours), disable_buffering=False, flush_interval=0, socket_timeout=0)
    # DogStatsd also reads DD_ENV/DD_SERVICE/DD_VERSION from os.environ; the config already honours
    # them, so keep ours and drop its copies (other DATADOG_TAGS survive).
    ours_keys = {t.split(":", 1)[0] for t in ours} | {"env", "service", "version"}
    extra = [t for t in statsd.constant_tags if t.split(":", 1)[0] not in ours_keys]
    statsd.constant_tags = ours + extra
    return statsd


class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(MS_BUCKETS) + 1)  # per bucket, not cumulative; last = +Inf
        self.sum = 0.0


class _PrometheusView:
    """A prometheus-client collector over the telemetry's cumulative state."""

    def __init__(self, telemetry: "Telemetry") -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        yield from self.telemetry._families()


class Telemetry:
    """The gateway's metrics facade; also the resilience guards' observer.

    ``Telemetry(None)`` (or ``statsd_enabled: false``) sends nothing over DogStatsD; Prometheus
    series are kept when ``prometheus`` is on (the default, also for ``None``). Every method is
    cheap (no I/O, no formatting, no lock) and never raises for a well-formed call.

    Recording is one ``dict.setdefault(key, []).append(value)``: both steps are atomic under the
    GIL, so calls from several threads never lose each other's values, and no lock is taken (a
    lock tripled the cost). The exporter swaps the whole buffer out and folds it only one interval
    later, by when every call that grabbed the old buffer has long finished. :meth:`flush` and a
    Prometheus scrape fold at once: a call racing them *from another thread* could land in a
    folded buffer and be lost (the event loop's own calls cannot race a scrape it is running).

    ``flush_interval_s``: how often the exporter thread sends to DogStatsD (counts summed over the
    interval, distribution values packed, every gauge re-sent so a quiet gateway still reports
    them). 0 = no thread: only :meth:`flush` exports (tests, benchmarks).
    """

    def __init__(self, config: "TelemetryConfig | None" = None, *, flush_interval_s: float = 1.0) -> None:
        self.config = config
        self.namespace = config.namespace if config is not None else "rag"
        self.prometheus_enabled = config.prometheus if config is not None else True
        self.statsd: Any = _make_statsd(config) if config is not None and config.statsd_enabled else None
        self.registry: CollectorRegistry | None = None
        if self.prometheus_enabled:
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(_PrometheusView(self))  # type: ignore[arg-type]
        self.in_flight = 0  # changed by the access-log middleware, on the event loop only
        self.breakers: dict[str, str] = {}
        self.kb_version: str | None = None
        self.kb_chunks: int | None = None
        self.kb_created_at: float | None = None
        self._routes: frozenset[str] | None = None
        self._route_tags: dict[str, str] = {}
        # Recorded by the request path, one dict per catalogue slot: key → list of values.
        self._pending: list[dict[tuple[Any, ...], list[Any]]] = [{} for _ in CATALOGUE]
        self._ripe: list[dict[tuple[Any, ...], list[Any]]] | None = None  # swapped out, folded next tick
        self._gauges: dict[tuple[int, tuple[str, ...]], float] = {}
        # Owned by _drain/_send (under _export_lock).
        self._export_lock = threading.RLock()
        self._labels: dict[tuple[int, tuple[Any, ...]], tuple[str, ...]] = {}
        self._totals: list[dict[tuple[str, ...], Any]] = [{} for _ in CATALOGUE]
        self._outbox: list[list[dict[tuple[Any, ...], Any]]] = []
        self._warned: set[int] = set()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_interval_s > 0:
            self._thread = threading.Thread(target=self._export_loop, args=(flush_interval_s,),
                                            name="rag-telemetry-export", daemon=True)
            self._thread.start()

    # ---- wiring ------------------------------------------------------------------------------
    def register_routes(self, routes: Iterable[str]) -> None:
        """The canonical route patterns the app serves; any other route is tagged ``unmatched``."""
        self._routes = frozenset(routes)
        self._route_tags = {}

    def track_dependencies(self, names: Iterable[str]) -> None:
        """Report ``breaker.state`` = closed for these dependencies before their first call."""
        for name in names:
            self._dependency_seen(name)

    def _route(self, route: str) -> str:
        tag = self._route_tags.get(route)
        if tag is None:
            known = route in self._routes if self._routes is not None else len(self._route_tags) < 64
            # Not wired to a router (tests, tools): a bounded number of distinct values.
            tag = route_tag(route) if known else UNMATCHED_ROUTE
            if len(self._route_tags) < 1024:
                self._route_tags[route] = tag
        return tag

    def _dependency_seen(self, dependency: str) -> None:
        if dependency not in self.breakers:
            self._set_breaker(dependency, "closed")

    # ---- requests ----------------------------------------------------------------------------
    def request_started(self, route: str) -> None:
        self.in_flight += 1

    def request_finished(self, route: str, status: int, mode: str | None, degraded: bool,
                         duration_ms: float) -> None:
        """``duration_ms`` in milliseconds; ``mode`` None when no pipeline ran (probes, 4xx)."""
        self.in_flight -= 1
        key = (self._route_tags.get(route) or self._route(route), status, mode, degraded)
        self._pending[_REQ_COUNT].setdefault(key, []).append(duration_ms)

    def degradation(self, component: str, reason: str) -> None:
        self._pending[_DEGRADATION].setdefault((component, reason), []).append(1)

    def rate_limited(self, route: str) -> None:
        key = (self._route_tags.get(route) or self._route(route),)
        self._pending[_RATE_LIMITED].setdefault(key, []).append(1)

    # ---- fallbacks ---------------------------------------------------------------------------
    def cache_result(self, result: str) -> None:
        """``result``: hit | miss | stale_serve | error."""
        self._pending[_CACHE].setdefault((result,), []).append(1)

    def keyword_search(self, duration_ms: float, hits: int) -> None:
        """One keyword-index search: ``duration_ms`` in ms, ``hits`` chunks returned."""
        self._pending[_KW_SEARCHES].setdefault(("found" if hits > 0 else "empty",), []).append(duration_ms)

    def kb_state(self, version: str | None, chunks: int, age_s: float | None) -> None:
        """The active KB version changed (or was loaded): ``age_s`` seconds since it was built."""
        gauges = dict(self._gauges)
        if self.kb_version is not None:
            gauges.pop((_KB_INFO, (_tag_value(self.kb_version),)), None)
        if version is not None:
            gauges[(_KB_INFO, (_tag_value(version),))] = 1
        gauges[(_KB_CHUNKS, ())] = chunks
        self.kb_version, self.kb_chunks = version, chunks
        self.kb_created_at = time.time() - age_s if age_s is not None else None
        self._gauges = gauges  # replaced whole: readers in other threads see the old or the new one

    def kb_age_s(self) -> float | None:
        """Seconds since the active KB version was built; None before one is loaded."""
        return None if self.kb_created_at is None else max(0.0, time.time() - self.kb_created_at)

    # ---- resilience observer (called by resilience.Guard) ------------------------------------
    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None:
        """One upstream attempt ended; ``seconds`` is converted to ms."""
        if dependency not in self.breakers:
            self._dependency_seen(dependency)
        self._pending[_DEP_ATTEMPTS].setdefault((dependency, outcome), []).append(seconds * 1e3)

    def on_retry(self, dependency: str, reason: str) -> None:
        self._pending[_DEP_RETRIES].setdefault((dependency, reason), []).append(1)
        per_request = request_retries.get()
        if per_request is not None:  # the guard runs in the request's task: count it for the log line
            per_request[dependency] = per_request.get(dependency, 0) + 1

    def on_shed(self, dependency: str) -> None:
        if dependency not in self.breakers:
            self._dependency_seen(dependency)
        self._pending[_DEP_SHED].setdefault((dependency,), []).append(1)

    def on_short_circuit(self, dependency: str) -> None:
        if dependency not in self.breakers:
            self._dependency_seen(dependency)
        self._pending[_DEP_SHORT].setdefault((dependency,), []).append(1)

    def on_state_change(self, dependency: str, old: str, new: str) -> None:
        """Breaker transition: gauge + counter, and one log event (rare, so logging here is fine)."""
        self._set_breaker(dependency, new)
        self._pending[_BREAKER_TRANSITIONS].setdefault((dependency, old, new), []).append(1)
        events.log(logging.WARNING if new == "open" else logging.INFO, "breaker %s: %s -> %s", dependency, old, new,
                   extra={"event": "breaker_state_change", "dependency": dependency, "from": old, "to": new})

    def _set_breaker(self, dependency: str, state: str) -> None:
        gauges = dict(self._gauges)
        gauges[(_BREAKER_STATE, (_tag_value(dependency),))] = BREAKER_STATE_VALUES.get(state, -1)
        self.breakers = {**self.breakers, dependency: state}
        self._gauges = gauges

    # ---- export ------------------------------------------------------------------------------
    def _series(self, index: int, raw: tuple[Any, ...]) -> tuple[str, ...]:
        labels = self._labels.get((index, raw))
        if labels is None:
            labels = _label_values(index, raw)
            if len(self._totals[index]) < MAX_SERIES_PER_METRIC:
                self._labels[(index, raw)] = labels
            elif index not in self._warned:
                self._warned.add(index)
                log.warning("metric %s passed %d series (an unbounded tag value?)", CATALOGUE[index].name,
                            MAX_SERIES_PER_METRIC)
        return labels

    def _drain(self, now: bool = True) -> None:
        """Swap the recording buffer out; fold the buffer swapped out last time (and, with ``now``,
        this one too) into the cumulative (Prometheus) state and queue it for DogStatsD. No
        formatting, no I/O: safe on the event loop (a scrape)."""
        with self._export_lock:
            current, self._pending = self._pending, [{} for _ in CATALOGUE]
            ripe, self._ripe = self._ripe, None
            for buffer in (ripe, current) if now else (ripe,):
                if buffer is not None:
                    self._fold(buffer)
            if not now:
                self._ripe = current

    def _fold(self, buffer: list[dict[tuple[Any, ...], list[Any]]]) -> None:
        pending: list[dict[tuple[Any, ...], Any]] = [dict(d) if d else {} for d in buffer]  # atomic copies
        if not any(pending):
            return
        _expand(pending)
        for index in _COUNTED:
            totals = self._totals[index]
            for raw, n in pending[index].items():
                labels = self._series(index, raw)
                totals[labels] = totals.get(labels, 0) + n
        if self.registry is not None:
            for index in _SAMPLED:
                totals = self._totals[index]
                for raw, values in pending[index].items():
                    labels = self._series(index, raw)
                    hist = totals.get(labels)
                    if hist is None:
                        hist = totals[labels] = _Histogram()
                    buckets = hist.buckets
                    for bucket in map(_bucket_of, values):
                        buckets[bucket] += 1
                    hist.sum += sum(values)
        if self.statsd is not None:
            self._outbox.append(pending)

    def _current_gauges(self) -> dict[tuple[int, tuple[str, ...]], float]:
        gauges = dict(self._gauges)
        gauges[(_IN_FLIGHT, ())] = self.in_flight
        age = self.kb_age_s()
        gauges[(_KB_AGE, ())] = age if age is not None else math.nan
        return gauges

    def _send(self) -> None:
        """Format and send everything queued, then every gauge (exporter thread or :meth:`flush`)."""
        statsd = self.statsd
        if statsd is None:
            return
        with self._export_lock:
            outbox, self._outbox = self._outbox, []
            for pending in outbox:
                for index in _COUNTED:
                    name = CATALOGUE[index].name
                    for raw, n in pending[index].items():
                        statsd.increment(name, n, tags=self._tags(index, raw))
                for index in _SAMPLED:
                    spec = CATALOGUE[index]
                    send = statsd.distribution if spec.type == "distribution" else statsd.histogram
                    for raw, values in pending[index].items():
                        tags = self._tags(index, raw)
                        for i in range(0, len(values), VALUES_PER_LINE):
                            chunk = values[i:i + VALUES_PER_LINE]
                            # A str value is sent as-is: "v1:v2:…" is one multi-value DogStatsD line.
                            send(spec.name, _VALUE_FORMATS[len(chunk)] % tuple(chunk), tags=tags)
            for (index, labels), value in self._current_gauges().items():
                if not math.isnan(value):
                    statsd.gauge(CATALOGUE[index].name, value, tags=self._gauge_tags(index, labels))
            statsd.flush()

    def _tags(self, index: int, raw: tuple[Any, ...]) -> list[str]:
        return [f"{k}:{v}" for k, v in zip(CATALOGUE[index].tags, self._series(index, raw))]

    @staticmethod
    def _gauge_tags(index: int, labels: tuple[str, ...]) -> list[str]:
        return [f"{k}:{v}" for k, v in zip(CATALOGUE[index].tags, labels)]

    def _export_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self._drain(now=False)
                self._send()
            except Exception:  # noqa: BLE001 - a metrics bug must not kill the exporter silently
                log.exception("metrics export failed")

    def flush(self) -> bool:
        """Export now: every pending metric and gauge is sent before this returns (non-blocking
        socket: a full socket drops). CPU work off the request path: tests, benchmarks, shutdown."""
        self._drain()
        self._send()
        return True

    def _families(self) -> list[Metric]:
        with self._export_lock:  # a consistent snapshot while the exporter thread may be folding
            self._drain()
            return list(self._build_families())

    def _build_families(self) -> Iterator[Metric]:
        gauges = self._current_gauges()
        for index, spec in enumerate(CATALOGUE):
            name, doc, tags = spec.prometheus_name(self.namespace), spec.description, list(spec.tags)
            if spec.type == "count":
                fam: Metric = CounterMetricFamily(name, doc, labels=tags)
                for labels, total in list(self._totals[index].items()):
                    fam.add_metric(list(labels), total)
            elif spec.type == "gauge":
                fam = GaugeMetricFamily(name, doc, labels=tags)
                for (i, labels), value in gauges.items():
                    if i == index:
                        fam.add_metric(list(labels), value)
            else:
                fam = HistogramMetricFamily(name, doc, labels=tags)
                for labels, hist in list(self._totals[index].items()):
                    cumulative, running = [], 0
                    for bound, n in zip((*MS_BUCKETS, math.inf), hist.buckets):
                        running += n
                        cumulative.append((floatToGoString(bound), running))
                    fam.add_metric(list(labels), cumulative, sum_value=hist.sum)
            yield fam

    def prometheus_text(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every series; b"" when disabled."""
        return generate_latest(self.registry) if self.registry is not None else b""

    def close_sync(self, timeout_s: float = 2.0) -> None:
        """Stop the exporter, send what is left, close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.statsd is not None:
            self.flush()
            self.statsd.close_socket()

    async def close(self) -> None:
        """:meth:`close_sync` in a thread (the final send must not hold the event loop)."""
        import asyncio

        await asyncio.to_thread(self.close_sync)


# ---- documentation ---------------------------------------------------------------------------
def catalogue_rows(namespace: str = "rag") -> list[tuple[str, str, str, str, str, str]]:
    """(Datadog name, Prometheus name, type, unit, tags, description) for every metric."""
    rows = []
    for spec in CATALOGUE:
        prom = spec.prometheus_name(namespace) + ("_total" if spec.type == "count" else "")
        desc = spec.description + ("" if spec.plotted else f" *Not on the dashboard: {spec.unplotted_reason}*")
        tags = ", ".join(f"{t} ({' / '.join(spec.values[t])})" if t in spec.values else t for t in spec.tags)
        rows.append((spec.datadog_name(namespace), prom, spec.type, spec.unit, tags or "—", desc))
    return rows


def catalogue_markdown(namespace: str = "rag") -> str:
    lines = ["| metric (DogStatsD) | Prometheus | type | unit | tags | meaning |",
             "|---|---|---|---|---|---|"]
    for dd, prom, kind, unit, tags, desc in catalogue_rows(namespace):
        lines.append(f"| `{dd}` | `{prom}` | {kind} | {unit} | {tags} | {desc} |")
    return "\n".join(lines) + "\n"


DOC_MARKERS = ("<!-- metric-catalogue:start -->\n", "<!-- metric-catalogue:end -->")


def render_doc(text: str) -> str:
    """``text`` with the catalogue table between the markers regenerated."""
    start, end = DOC_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + catalogue_markdown() + end + tail


if __name__ == "__main__":  # python -m gateway.telemetry → refresh docs/observability.md
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
    doc.write_text(render_doc(doc.read_text(encoding="utf-8")), encoding="utf-8")
