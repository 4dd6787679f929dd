"""The metrics facade: one recording buffer, two sinks (DogStatsD and Prometheus).

Cost on the request path: a dict update or a list append, nothing else (~0.2 µs per metric); a
degraded request's ~20 metric updates sent straight to DogStatsd or prometheus-client would cost
30–55 µs, 15–30 % of a ~190 µs pass-through request (bench/metrics_overhead.py). An exporter thread
wakes every ``flush_interval_s`` (1 s) and hands the folded buffer to :mod:`gateway.telemetry.statsd`;
Prometheus reads the same cumulative state at scrape time (:mod:`gateway.telemetry.prometheus`).
"""
from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from gateway.telemetry import statsd as statsd_sink
from gateway.telemetry.catalogue import (
    _BREAKER_OPEN_FOR,
    _BREAKER_STATE,
    _BREAKER_TRANSITIONS,
    _CACHE,
    _COUNTED,
    _DEGRADATION,
    _DEP_ATTEMPTS,
    _DEP_RETRIES,
    _DEP_SHED,
    _DEP_SHORT,
    _IN_FLIGHT,
    _JOBS,
    _KB_AGE,
    _KB_CHUNKS,
    _KB_INFO,
    _KW_SEARCHES,
    _LLM_FIRST_TOKEN,
    _LLM_STREAMS,
    _QUALITY,
    _RATE_LIMITED,
    _REQ_COUNT,
    _SAMPLED,
    BREAKER_STATE_VALUES,
    CATALOGUE,
    MAX_SERIES_PER_METRIC,
    UNMATCHED_ROUTE,
    _expand,
    _label_values,
    _tag_value,
    route_tag,
    quality_measures,
    undeclared,
)
from gateway.telemetry.prometheus import Histogram, PrometheusView, build_families

if TYPE_CHECKING:
    from gateway.config import TelemetryConfig

log = logging.getLogger("rag_sidecar.telemetry")
events = logging.getLogger("rag_sidecar.events")

# Every undeclared "metric{key:value}" any Telemetry in this process emitted (tests/conftest.py fails
# the test that caused one).
UNDECLARED_SEEN: list[str] = []

# Retries per dependency for the current request (set by the access-log middleware).
request_retries: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "request_retries", default=None)


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
        self.statsd: Any = statsd_sink.make_statsd(config) if config is not None and config.statsd_enabled else None
        self.registry: CollectorRegistry | None = None
        if self.prometheus_enabled:
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(PrometheusView(self))  # type: ignore[arg-type]
        self.in_flight = 0  # changed by the access-log middleware, on the event loop only
        self.breakers: dict[str, str] = {}
        self._left_closed_at: dict[str, float] = {}  # dependency → monotonic time its breaker left closed
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
        self.undeclared: set[str] = set()  # "metric{key:value}" emitted but not in the catalogue
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

    # ---- /v1/messages streams -----------------------------------------------------------------
    def llm_first_token(self, model: str, ms: float) -> None:
        """Time to the first content of a /v1/messages stream, in ms, by the answering model."""
        self._pending[_LLM_FIRST_TOKEN].setdefault((model,), []).append(ms)

    def llm_stream_outcome(self, model: str, outcome: str) -> None:
        """How a /v1/messages stream ended (a :class:`gateway.contract.StreamOutcome`)."""
        self._pending[_LLM_STREAMS].setdefault((model, outcome), []).append(1)

    # ---- fallbacks ---------------------------------------------------------------------------
    def cache_result(self, result: str) -> None:
        """``result``: hit | miss | stale_serve | error."""
        self._pending[_CACHE].setdefault((result,), []).append(1)

    def keyword_search(self, duration_ms: float, hits: int) -> None:
        """One keyword-index search: ``duration_ms`` in ms, ``hits`` chunks returned."""
        self._pending[_KW_SEARCHES].setdefault(("found" if hits > 0 else "empty",), []).append(duration_ms)

    def kb_state(self, version: str | None, chunks: int, age_s: float | None, evaluation: Any = None) -> None:
        """The active KB version changed (or was loaded): ``age_s`` seconds since it was built;
        ``evaluation``: its manifest's golden-set figures (``kb.retrieval_quality``), None if never evaluated."""
        gauges = {k: v for k, v in self._gauges.items() if k[0] != _QUALITY}
        for measure, value in quality_measures(evaluation).items():
            gauges[(_QUALITY, (measure,))] = value
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

    # ---- job queue (gateway.jobs) ------------------------------------------------------------
    def job_submitted(self, queries: int) -> None:
        self._pending[_JOBS["jobs.submitted"]].setdefault((), []).extend([1] * queries)

    def job_rejected(self, reason: str) -> None:
        self._pending[_JOBS["jobs.rejected"]].setdefault((reason,), []).append(1)

    def job_item(self, outcome: str, duration_ms: float) -> None:
        """One job query finished (``outcome`` in JOB_OUTCOMES); ``duration_ms`` of its last attempt."""
        self._pending[_JOBS["jobs.items"]].setdefault((outcome,), []).append(1)
        self._pending[_JOBS["jobs.item.duration"]].setdefault((outcome,), []).append(duration_ms)

    def job_cancelled(self, queries: int) -> None:
        self._pending[_JOBS["jobs.items"]].setdefault(("cancelled",), []).extend([1] * queries)

    def job_retry(self, reason: str) -> None:
        self._pending[_JOBS["jobs.retries"]].setdefault((reason,), []).append(1)

    def job_webhook(self, outcome: str) -> None:
        self._pending[_JOBS["jobs.webhooks"]].setdefault((outcome,), []).append(1)

    def job_queue(self, depth: float, in_flight: float, oldest_age_s: float) -> None:
        """The queue as the store sees it (the worker reports every few seconds)."""
        gauges = dict(self._gauges)
        gauges[(_JOBS["jobs.queue.depth"], ())] = depth
        gauges[(_JOBS["jobs.queue.in_flight"], ())] = in_flight
        gauges[(_JOBS["jobs.queue.oldest_age"], ())] = oldest_age_s
        self._gauges = gauges

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
        if state == "closed":
            self._left_closed_at.pop(dependency, None)
        elif dependency not in self._left_closed_at:  # open ↔ half_open keeps the first departure
            self._left_closed_at = {**self._left_closed_at, dependency: time.monotonic()}
        gauges = dict(self._gauges)
        gauges[(_BREAKER_STATE, (_tag_value(dependency),))] = BREAKER_STATE_VALUES.get(state, -1)
        self.breakers = {**self.breakers, dependency: state}
        self._gauges = gauges

    def _undeclared(self, name: str, pairs: list[str]) -> None:
        """A tag value the catalogue does not declare: sent anyway (dropping data hides it), logged once
        per series and kept in :attr:`undeclared` and :data:`UNDECLARED_SEEN` (the test suite fails on it)."""
        for pair in pairs:
            entry = f"{name}{{{pair}}}"
            if entry not in self.undeclared:
                self.undeclared.add(entry)
                UNDECLARED_SEEN.append(entry)
                log.warning("metric %s emitted an undeclared tag value %s (declare it in the catalogue)", name, pair)

    # ---- export ------------------------------------------------------------------------------
    def _series(self, index: int, raw: tuple[Any, ...]) -> tuple[str, ...]:
        labels = self._labels.get((index, raw))
        if labels is None:
            labels = _label_values(index, raw)
            bad = undeclared(index, labels)
            if bad:  # once per new series (cached below), off the request path
                self._undeclared(CATALOGUE[index].name, bad)
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
                        hist = totals[labels] = Histogram()
                    hist.add(values)
        if self.statsd is not None:
            self._outbox.append(pending)

    def _current_gauges(self) -> dict[tuple[int, tuple[str, ...]], float]:
        gauges = dict(self._gauges)
        gauges[(_IN_FLIGHT, ())] = self.in_flight
        age = self.kb_age_s()
        gauges[(_KB_AGE, ())] = age if age is not None else math.nan
        now, left = time.monotonic(), self._left_closed_at
        for dependency in self.breakers:
            since = left.get(dependency)
            gauges[(_BREAKER_OPEN_FOR, (_tag_value(dependency),))] = 0.0 if since is None else now - since
        return gauges

    def _send(self) -> None:
        """Format and send everything queued, then every gauge (exporter thread or :meth:`flush`)."""
        if self.statsd is None:
            return
        with self._export_lock:
            outbox, self._outbox = self._outbox, []
            statsd_sink.send(self.statsd, outbox, self._current_gauges(), self._tags)

    def _tags(self, index: int, raw: tuple[Any, ...]) -> list[str]:
        return [f"{k}:{v}" for k, v in zip(CATALOGUE[index].tags, self._series(index, raw))]

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
        return build_families(self.namespace, self._totals, self._current_gauges())

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
