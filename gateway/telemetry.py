"""Metrics: one catalogue, two sinks (DogStatsD and Prometheus).

:data:`CATALOGUE` is the single source of metric names. Every name is ``<component>.<what>``
without the namespace; DogStatsD prepends it (``request.count`` → ``rag.request.count``) and
Prometheus joins it with underscores, adding the unit suffix for ms/seconds
(``request.duration`` → ``rag_request_duration_ms``; counters get ``_total``). The Datadog
dashboard, the monitors, ``docs/observability.md`` and ``/metrics`` are all checked against it.

Cost on the request path: no I/O. DogStatsD is buffered *and* aggregated (counts and gauges are
summed/last-valued client side), its flush thread hands full datagrams to a bounded background
sender queue, and a full queue drops the datagram instead of waiting (measured: ~0.7 µs per count,
~1.5 µs per distribution; unbuffered sends cost ~37 µs). No agent listening → datagrams dropped.

Tag values are bounded by construction: routes are canonical patterns (``/v1/query``, never a raw
path; unknown routes become ``unmatched``), everything else comes from small enums.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal
from urllib.parse import urlparse

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

if TYPE_CHECKING:
    from gateway.config import TelemetryConfig

log = logging.getLogger("rag_sidecar.telemetry")
events = logging.getLogger("rag_sidecar.events")

MetricType = Literal["count", "gauge", "distribution", "histogram"]
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8"
# `*_created` samples double every counter/histogram series for a timestamp nobody graphs.
# (Process-wide switch in prometheus-client; this process exposes only our registry.)
disable_created_metrics()
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
# Latency buckets (ms) for the Prometheus histograms; Datadog distributions need none.
MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
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
    "Requests being served right now (re-sent every gauge interval).")
RATE_LIMITED = MetricSpec(
    "rate_limit.rejected", "count", "requests", ("route",),
    "Requests refused with 429 by the per-client token bucket.")
DEGRADATION_COUNT = MetricSpec(
    "degradation.count", "count", "events", ("component", "reason"),
    "Rungs of the ladder skipped or failed (one per `degradations[]` entry of a response).")
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
    "Circuit breaker state: 0 closed, 1 half-open, 2 open (re-sent every gauge interval).")
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
    "Always 1, tagged with the active KB version (re-sent every gauge interval).")
KB_AGE = MetricSpec(
    "kb.age", "gauge", "seconds", (),
    "Age of the active KB version since it was built (re-sent every gauge interval).")
KB_CHUNKS = MetricSpec(
    "kb.chunks", "gauge", "chunks", (),
    "Chunks in the active KB version.")

CATALOGUE: tuple[MetricSpec, ...] = (
    REQUEST_COUNT, REQUEST_DURATION, REQUEST_IN_FLIGHT, RATE_LIMITED, DEGRADATION_COUNT,
    DEPENDENCY_ATTEMPTS, DEPENDENCY_DURATION, DEPENDENCY_RETRIES, DEPENDENCY_SHED, DEPENDENCY_SHORT_CIRCUITS,
    BREAKER_STATE, BREAKER_TRANSITIONS, CACHE_RESULTS, KEYWORD_DURATION, KEYWORD_SEARCHES,
    KB_INFO, KB_AGE, KB_CHUNKS,
)
_DOGSTATSD_METHOD = {"count": "increment", "gauge": "gauge", "distribution": "distribution",
                     "histogram": "histogram"}


# Datadog's tag charset (datadog.util.format): anything else becomes "_". Applied here so that
# Prometheus labels carry exactly the values Datadog shows.
_TAG_INVALID = re.compile(r"[^\w\-:/.]")


def _tag_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _TAG_INVALID.sub("_", str(value))


def route_tag(canonical: str) -> str:
    """``/admin/breakers/{name}/{action}`` → ``/admin/breakers/:name/:action`` (braces are not tag-safe)."""
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", r":\1", canonical)


class _Metric:
    """One catalogue entry bound to both sinks. ``emit`` caches (tags, prometheus child) per label tuple."""

    __slots__ = ("spec", "_send", "_name", "_prom", "_series", "_warned")

    def __init__(self, spec: MetricSpec, statsd: Any, prom_registry: CollectorRegistry | None,
                 namespace: str) -> None:
        self.spec = spec
        self._name = spec.name  # DogStatsd prepends its namespace
        self._send = getattr(statsd, _DOGSTATSD_METHOD[spec.type]) if statsd is not None else None
        self._prom: Any = None
        if prom_registry is not None:
            pname = spec.prometheus_name(namespace)
            doc = spec.description
            if spec.type == "count":
                self._prom = Counter(pname, doc, spec.tags, registry=prom_registry)
            elif spec.type == "gauge":
                self._prom = Gauge(pname, doc, spec.tags, registry=prom_registry)
            else:
                self._prom = Histogram(pname, doc, spec.tags, registry=prom_registry, buckets=MS_BUCKETS)
        self._series: dict[tuple[Any, ...], tuple[list[str], Any]] = {}
        self._warned = False

    def _resolve(self, labels: tuple[Any, ...]) -> tuple[list[str], Any]:
        values = [_tag_value(v) for v in labels]
        if len(values) != len(self.spec.tags):
            raise ValueError(f"{self.spec.name}: expected tags {self.spec.tags}, got {labels!r}")
        tags = [f"{k}:{v}" for k, v in zip(self.spec.tags, values)]
        child = None
        if self._prom is not None:
            child = self._prom.labels(*values) if values else self._prom
        if len(self._series) >= MAX_SERIES_PER_METRIC:
            if not self._warned:
                self._warned = True
                log.warning("metric %s passed %d tag combinations; not caching more (unbounded tag value?)",
                            self.spec.name, MAX_SERIES_PER_METRIC)
        else:
            self._series[labels] = (tags, child)
        return tags, child

    def emit(self, value: float, *labels: Any) -> None:
        entry = self._series.get(labels)
        tags, child = entry if entry is not None else self._resolve(labels)
        if self._send is not None:
            self._send(self._name, value, tags=tags)
        if child is not None:
            kind = self.spec.type
            if kind == "count":
                child.inc(value)
            elif kind == "gauge":
                child.set(value)
            else:
                child.observe(value)

    def set_prometheus(self, value: float, *labels: Any) -> None:
        """Set a gauge in Prometheus only (values DogStatsD cannot carry, e.g. NaN for "unknown")."""
        if self._prom is not None:
            (self._prom.labels(*[_tag_value(v) for v in labels]) if labels else self._prom).set(value)

    def remove(self, *labels: Any) -> None:
        """Drop a gauge series from Prometheus (e.g. the previous KB version)."""
        self._series.pop(labels, None)
        if self._prom is not None and labels:
            try:
                self._prom.remove(*[_tag_value(v) for v in labels])
            except KeyError:
                pass


class _OncePer(logging.Filter):
    """Let one record per message template through every ``interval_s`` (a missing agent makes
    DogStatsd warn on every flush, ~3 lines a second; one line per 5 minutes says the same)."""

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
    """A buffered, aggregating DogStatsd with a background sender; raises ConfigError on a bad URL."""
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
    statsd = DogStatsd(host=host, port=port, socket_path=socket_path, namespace=config.namespace or None,
                       constant_tags=list(ours), disable_buffering=False, disable_aggregation=False,
                       disable_background_sender=False, sender_queue_size=4096, sender_queue_timeout=0)
    # DogStatsd also reads DD_ENV/DD_SERVICE/DD_VERSION from os.environ; the config already honours
    # them, so keep ours and drop its copies (other DATADOG_TAGS survive).
    ours_keys = {t.split(":", 1)[0] for t in ours} | {"env", "service", "version"}
    extra = [t for t in statsd.constant_tags if t.split(":", 1)[0] not in ours_keys]
    statsd.constant_tags = ours + extra
    return statsd


class Telemetry:
    """The gateway's metrics facade; also the resilience guards' observer.

    ``Telemetry(None)`` (or ``statsd_enabled: false``) sends nothing over DogStatsD; Prometheus
    series are kept when ``prometheus`` is on (the default, also for ``None``). Every method is
    cheap, never does I/O and never raises for a well-formed call.

    ``gauge_interval_s``: gauges (in-flight, breaker state, KB info/age/chunks) are re-sent this
    often to DogStatsD, so a quiet gateway still reports them (Datadog keeps a gauge only for the
    interval it was sent in).
    """

    def __init__(self, config: "TelemetryConfig | None" = None, *, gauge_interval_s: float = 10.0) -> None:
        self.config = config
        self.namespace = config.namespace if config is not None else "rag"
        self.in_flight = 0
        self.prometheus_enabled = config.prometheus if config is not None else True
        self.registry: CollectorRegistry | None = CollectorRegistry() if self.prometheus_enabled else None
        self.statsd: Any = _make_statsd(config) if config is not None and config.statsd_enabled else None
        self._m = {spec.name: _Metric(spec, self.statsd, self.registry, self.namespace) for spec in CATALOGUE}
        self._routes: frozenset[str] | None = None
        self._route_tags: dict[str, str] = {}
        self.breakers: dict[str, str] = {}
        self.kb_version: str | None = None
        self.kb_chunks: int | None = None
        self.kb_created_at: float | None = None
        self._closed = False
        self._stop = threading.Event()
        self._gauge_thread: threading.Thread | None = None
        self._m[KB_AGE.name].set_prometheus(math.nan)  # no KB yet: unknown, not "0 s old"
        if self.statsd is not None and gauge_interval_s > 0:
            self._gauge_thread = threading.Thread(target=self._gauge_loop, args=(gauge_interval_s,),
                                                  name="rag-telemetry-gauges", daemon=True)
            self._gauge_thread.start()

    # ---- wiring ------------------------------------------------------------------------------
    def register_routes(self, routes: Iterable[str]) -> None:
        """The canonical route patterns the app serves; any other route is tagged ``unmatched``."""
        self._routes = frozenset(routes)
        self._route_tags.clear()

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
            self.breakers[dependency] = "closed"
            self._m[BREAKER_STATE.name].emit(0, dependency)

    # ---- requests ----------------------------------------------------------------------------
    def request_started(self, route: str) -> None:
        self.in_flight += 1
        self._m[REQUEST_IN_FLIGHT.name].emit(self.in_flight)

    def request_finished(self, route: str, status: int, mode: str | None, degraded: bool,
                         duration_ms: float) -> None:
        """``duration_ms`` in milliseconds; ``mode`` None when no pipeline ran (probes, 4xx)."""
        self.in_flight -= 1
        self._m[REQUEST_IN_FLIGHT.name].emit(self.in_flight)
        route = self._route(route)
        self._m[REQUEST_COUNT.name].emit(1, route, status, f"{status // 100}xx", mode, bool(degraded))
        self._m[REQUEST_DURATION.name].emit(duration_ms, route, mode)

    def degradation(self, component: str, reason: str) -> None:
        self._m[DEGRADATION_COUNT.name].emit(1, component, reason)

    def rate_limited(self, route: str) -> None:
        self._m[RATE_LIMITED.name].emit(1, self._route(route))

    # ---- fallbacks ---------------------------------------------------------------------------
    def cache_result(self, result: str) -> None:
        """``result``: hit | miss | stale_serve | error."""
        self._m[CACHE_RESULTS.name].emit(1, result)

    def keyword_search(self, duration_ms: float, hits: int) -> None:
        """One keyword-index search: ``duration_ms`` in ms, ``hits`` chunks returned."""
        self._m[KEYWORD_DURATION.name].emit(duration_ms)
        self._m[KEYWORD_SEARCHES.name].emit(1, "found" if hits > 0 else "empty")

    def kb_state(self, version: str | None, chunks: int, age_s: float | None) -> None:
        """The active KB version changed (or was loaded): ``age_s`` seconds since it was built."""
        info = self._m[KB_INFO.name]
        if self.kb_version is not None and self.kb_version != version:
            info.remove(self.kb_version)
        self.kb_version, self.kb_chunks = version, chunks
        self.kb_created_at = time.time() - age_s if age_s is not None else None
        self._emit_kb()

    def _emit_kb(self) -> None:
        if self.kb_version is not None:
            self._m[KB_INFO.name].emit(1, self.kb_version)
        if self.kb_chunks is not None:
            self._m[KB_CHUNKS.name].emit(self.kb_chunks)
        age = self.kb_age_s()
        if age is not None:
            self._m[KB_AGE.name].emit(age)
        else:
            self._m[KB_AGE.name].set_prometheus(math.nan)

    def kb_age_s(self) -> float | None:
        return None if self.kb_created_at is None else max(0.0, time.time() - self.kb_created_at)

    # ---- resilience observer (called by resilience.Guard) ------------------------------------
    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None:
        """One upstream attempt ended; ``seconds`` is converted to ms."""
        self._dependency_seen(dependency)
        self._m[DEPENDENCY_ATTEMPTS.name].emit(1, dependency, outcome)
        self._m[DEPENDENCY_DURATION.name].emit(seconds * 1e3, dependency, outcome)

    def on_retry(self, dependency: str, reason: str) -> None:
        self._m[DEPENDENCY_RETRIES.name].emit(1, dependency, reason)

    def on_shed(self, dependency: str) -> None:
        self._dependency_seen(dependency)
        self._m[DEPENDENCY_SHED.name].emit(1, dependency)

    def on_short_circuit(self, dependency: str) -> None:
        self._dependency_seen(dependency)
        self._m[DEPENDENCY_SHORT_CIRCUITS.name].emit(1, dependency)

    def on_state_change(self, dependency: str, old: str, new: str) -> None:
        """Breaker transition: gauge + counter, and one log event (rare, so logging here is fine)."""
        self.breakers[dependency] = new
        self._m[BREAKER_STATE.name].emit(BREAKER_STATE_VALUES.get(new, -1), dependency)
        self._m[BREAKER_TRANSITIONS.name].emit(1, dependency, old, new)
        events.log(logging.WARNING if new == "open" else logging.INFO, "breaker %s: %s -> %s", dependency, old, new,
                   extra={"event": "breaker_state_change", "dependency": dependency, "from": old, "to": new})

    # ---- gauges, export, shutdown ------------------------------------------------------------
    def _emit_gauges(self) -> None:
        self._m[REQUEST_IN_FLIGHT.name].emit(self.in_flight)
        for dependency, state in list(self.breakers.items()):
            self._m[BREAKER_STATE.name].emit(BREAKER_STATE_VALUES.get(state, -1), dependency)
        self._emit_kb()

    def _gauge_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self._emit_gauges()
            except Exception:  # noqa: BLE001 - a metrics bug must not kill the thread silently
                log.exception("re-sending gauges failed")

    def prometheus_text(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every series; b"" when disabled."""
        if self.registry is None:
            return b""
        age = self.kb_age_s()
        self._m[KB_AGE.name].set_prometheus(age if age is not None else math.nan)
        return generate_latest(self.registry)

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Send everything buffered now and wait (≤ ``timeout_s``) for the sender queue to drain.

        Blocking: for tests, benchmarks and shutdown, never on the request path.
        """
        if self.statsd is None:
            return True
        self.statsd.flush_aggregated_metrics()
        self.statsd.flush_buffered_metrics()
        return bool(self.statsd.wait_for_pending(timeout_s))

    def close_sync(self, timeout_s: float = 2.0) -> None:
        """Stop the gauge thread, flush and stop DogStatsd's threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._gauge_thread is not None:
            self._gauge_thread.join(timeout_s)
        if self.statsd is not None:
            self.statsd.stop(timeout=timeout_s)
            self.statsd.close_socket(quiet=True)

    async def close(self) -> None:
        """Flush what is buffered (in a thread: it may block on the socket) and stop."""
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
