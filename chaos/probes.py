"""Steady-state probe evaluators: one function per probe type, looked up in :data:`EVALUATORS`.

Each evaluator gets a :class:`ProbeInput` (the probe, the phase's requests and the drill whose
snapshots it may read) and returns a :class:`Verdict`: the measured ``value``, the ``limit`` it was
held against, whether it was ``met`` and a ``detail`` dict for the journal. A new probe type is a
new function and one row in the table (and its schema in :mod:`chaos.scenario`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from chaos.load import RequestRecord
from chaos.scenario import Probe, Tolerance


class DrillView(Protocol):
    """What the evaluators read from the running :class:`chaos.drill.Drill` (declared here, so the
    probes do not import the drill that imports them)."""

    sample_interval_s: float
    samples: list[dict[str, Any]]
    phase_times: dict[str, list[float | None]]

    def spans(self, phase: str) -> list[tuple[float, float]]: ...

    def recovered_at(self, dependency: str) -> float | None: ...

    def guard_of(self, dependency: str) -> str: ...

    def attempts(self, dependency: str, phase: str, source: str) -> tuple[int | None, str]: ...

    def opens(self, dependency: str, phase: str) -> int | None: ...

    def peak_in_flight(self, dependency: str, phase: str, model: str | None) -> int | None: ...

    def slow_header_lives(self) -> list[float]: ...

    def noisy_clients(self) -> list[Any]: ...

    def final_state(self, dependency: str, phase: str) -> str | None: ...

    def blamed_components(self, dependency: str) -> set[str]: ...

    def all_faulted_components(self) -> set[str]: ...

    def proxy_counter(self, dependency: str, phase: str, key: str) -> tuple[int | None, str]: ...


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def in_spans(t: float, spans: Sequence[tuple[float, float]], skip_s: float = 0.0) -> bool:
    return any(s + skip_s <= t < e for s, e in spans)


def rounded(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def status_counts(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Requests per HTTP status, or per client-side error (hung, connection, …)."""
    return dict(Counter(r.error if r.error else str(r.status) for r in records))


@dataclass
class ProbeInput:
    """What an evaluator may read: ``records`` started in the phase's spans (only finished ones unless
    ``final``), ``done`` = finished, ``answers`` = finished 200s without a client-side error."""

    probe: Probe
    phase: str
    dependency: str
    spans: list[tuple[float, float]]
    records: list[RequestRecord]
    done: list[RequestRecord]
    answers: list[RequestRecord]
    all_records: list[RequestRecord]
    drill: DrillView

    @property
    def tol(self) -> Tolerance:
        return self.probe.tolerance

    @property
    def tol_min(self) -> float:
        """``tolerance.min``, which :data:`chaos.scenario._PROBE_RULES` requires for this probe type."""
        assert self.tol.min is not None, f"{self.probe.type} probe without tolerance.min"
        return self.tol.min

    @property
    def tol_max(self) -> float:
        """``tolerance.max``, which :data:`chaos.scenario._PROBE_RULES` requires for this probe type."""
        assert self.tol.max is not None, f"{self.probe.type} probe without tolerance.max"
        return self.tol.max


@dataclass
class Verdict:
    value: float | None
    limit: float | None
    met: bool
    detail: dict[str, Any] = field(default_factory=dict)


def availability(p: ProbeInput) -> Verdict:
    value = sum(r.available for r in p.records) / len(p.records) if p.records else None
    return Verdict(value, p.tol_min, value is not None and value >= p.tol_min,
                   {"by_status": status_counts(p.records)})


def latency_p99(p: ProbeInput) -> Verdict:
    tol, detail = p.tol, dict[str, Any]()
    latencies = [r.latency_ms for r in p.done if not r.hung and r.latency_ms is not None]
    value = percentile(latencies, 99)
    limit = p.tol_max
    if tol.plus_fallback_p99:
        fallback = percentile([r.latency_ms for r in p.answers if r.short_circuited and r.latency_ms is not None], 99)
        source = "short-circuited requests"
        if fallback is None:
            baseline = p.drill.spans("before")
            fallback = percentile([r.latency_ms for r in p.all_records if r.latency_ms is not None
                                   and in_spans(r.t, baseline)], 99)
            source = "baseline requests"
        detail["fallback_p99_ms"] = rounded(fallback, 1)
        detail["fallback_p99_from"] = source
        limit = p.tol_max + (fallback or 0.0)
    detail["p50_ms"] = rounded(percentile(latencies, 50), 1)
    return Verdict(value, limit, value is not None and value <= limit, detail)


def mode(p: ProbeInput) -> Verdict:
    modes = Counter(r.mode for r in p.answers)
    value = sum(modes[m] for m in p.tol.expect) / len(p.answers) if p.answers else None
    return Verdict(value, p.tol_min, value is not None and value >= p.tol_min, {"modes": dict(modes)})


def degraded_labelled(p: ProbeInput) -> Verdict:
    judged = [r for r in p.done if r.status in (200, 503) and r.error is None]
    problems = [(r.i, r.label_problem(p.tol.allow_undegraded)) for r in judged]
    bad = [(i, problem) for i, problem in problems if problem]
    value = (len(judged) - len(bad)) / len(judged) if judged else None
    detail = {"judged": len(judged), "unlabelled": len(bad), "examples": [x for _, x in bad[:3]],
              "discard_events": sum(r.discarded for r in judged)}
    return Verdict(value, p.tol_min, value is not None and value >= p.tol_min, detail)


def upstream_attempts_ratio(p: ProbeInput) -> Verdict:
    attempts, source = p.drill.attempts(p.dependency, p.phase, p.probe.source)
    value = attempts / len(p.records) if attempts is not None and p.records else None
    met = value is not None and value <= p.tol_max
    if attempts is not None and not p.records:
        value, met = 0.0, attempts == 0
    return Verdict(value, p.tol_max, met, {"attempts": attempts, "source": source})


def breaker_transitions(p: ProbeInput) -> Verdict:
    tol = p.tol
    opens = p.drill.opens(p.dependency, p.phase)
    window_s = sum(e - s for s, e in p.spans)
    value = None if opens is None else 2.0 * opens  # every open is followed by a close (or will be)
    limit = tol.max if tol.max is not None else max(2.0, (tol.max_per_min or 0.0) * window_s / 60.0)
    return Verdict(value, limit, value is not None and value <= limit, {"opens": opens, "window_s": round(window_s, 3)})


def hung_requests(p: ProbeInput) -> Verdict:
    value = float(sum(r.hung for r in p.records))
    return Verdict(value, p.tol_max, value <= p.tol_max)


def recovery_time(p: ProbeInput) -> Verdict:
    """Seconds until closed again — for a breaker that did open (one that never opened has not recovered
    from anything: no value, not met)."""
    drill = p.drill
    detail: dict[str, Any] = {"guard": drill.guard_of(p.dependency), "resolution_s": drill.sample_interval_s}
    opened = drill.opens(p.dependency, "during")
    if not opened:
        detail["reason"] = "the breaker never opened during the fault"
        return Verdict(None, p.tol_max, False, detail)
    rec_at = drill.recovered_at(p.dependency)
    method_end = drill.phase_times["method"][1]
    value = None if rec_at is None or method_end is None else max(0.0, rec_at - method_end)
    return Verdict(value, p.tol_max, value is not None and value <= p.tol_max, detail)


def degraded_rate(p: ProbeInput) -> Verdict:
    tol = p.tol
    value = sum(bool(r.degraded) for r in p.answers) / len(p.answers) if p.answers else None
    limit = tol.max if tol.max is not None else tol.min
    met = value is not None and (tol.max is None or value <= tol.max) and (tol.min is None or value >= tol.min)
    return Verdict(value, limit, met, {"answers": len(p.answers), "since": p.probe.since})


def breaker_opened(p: ProbeInput) -> Verdict:
    opens = p.drill.opens(p.dependency, p.phase)
    return Verdict(None if opens is None else float(opens), p.tol_min,
                   opens is not None and opens >= p.tol_min, {"guard": p.drill.guard_of(p.dependency)})


def breaker_closed(p: ProbeInput) -> Verdict:
    state = p.drill.final_state(p.dependency, p.phase)
    value = None if state is None else float(state == "closed")
    return Verdict(value, 1.0, state == "closed", {"guard": p.drill.guard_of(p.dependency), "state": state})


def blame(p: ProbeInput) -> Verdict:
    """Degraded answers must name the faulted dependency (its guards) and no upstream that is healthy."""
    faulted = (p.drill.all_faulted_components() if p.probe.dependency is None
               else p.drill.blamed_components(p.dependency))
    upstreams = {"embedder", "vector_db", "llm", "llm_fallback"}
    degraded = [r for r in p.answers if r.degradations]
    wrong: list[str] = []
    right = 0
    for r in degraded:
        named = {d.get("component") for d in r.degradations}
        if named & faulted and not (named & upstreams) - p.drill.all_faulted_components():
            right += 1
        elif len(wrong) < 3:
            wrong.append(f"request {r.i}: {sorted(c for c in named if c)}")
    # No degraded answer is nothing misblamed (a 30% reset_peer can be absorbed by retries): whether the
    # fault had to degrade answers is asserted by the scenario's mode / degraded_rate probes, not here.
    value = right / len(degraded) if degraded else None
    return Verdict(value, p.tol_min, value is None or value >= p.tol_min,
                   {"degraded": len(degraded), "expected": sorted(faulted), "misblamed": wrong})


def resets_fired(p: ProbeInput) -> Verdict:
    resets, proxy = p.drill.proxy_counter(p.dependency, p.phase, "resets")
    detail: dict[str, Any] = {"proxy": proxy}
    if resets is None:
        detail["reason"] = "no /__stats__ on the fault proxy (a real Toxiproxy keeps no reset counter)"
    return Verdict(None if resets is None else float(resets), p.tol_min,
                   resets is not None and resets >= p.tol_min, detail)


def truncated_streams(p: ProbeInput) -> Verdict:
    """Streams that stopped without their end event and without an ``event: error``: the client may take
    a cut answer for a whole one (an honest ``event: error`` is counted apart)."""
    value = float(sum(r.error == "incomplete_stream" for r in p.records))
    return Verdict(value, p.tol_max, value <= p.tol_max,
                   {"streams": sum(r.stream for r in p.records),
                    "error_events": sum(r.error == "stream_error" for r in p.records)})


def upstream_concurrency(p: ProbeInput) -> Verdict:
    """The most calls the dependency's stand-in served at once (of ``model`` alone if given) since the
    drill started: what the gateway's bulkhead must keep at its limit however many requests wait."""
    peak = p.drill.peak_in_flight(p.dependency, p.phase, p.probe.model)
    detail: dict[str, Any] = {"model": p.probe.model} if p.probe.model else {}
    if peak is None:
        detail["reason"] = "no in-flight counter on this stand-in (GET /__stats__ peak_in_flight)"
    return Verdict(None if peak is None else float(peak), p.tol_max, peak is not None and peak <= p.tol_max,
                   detail)


def slow_headers_cut(p: ProbeInput) -> Verdict:
    """The longest a slowloris connection (``slow_clients`` ``trickle_headers``) stayed open, in seconds —
    one the gateway never closed counts the whole time its client kept trickling."""
    lives = p.drill.slow_header_lives()
    value = max(lives) if lives else None
    detail: dict[str, Any] = {"connections": len(lives), "p50_s": rounded(percentile(lives, 50), 2)}
    if value is None:
        detail["reason"] = "no header-trickling connection (slow_clients attributes.trickle_headers)"
    return Verdict(rounded(value, 2), p.tol_max, value is not None and value <= p.tol_max, detail)


def noisy_client_accepted(p: ProbeInput) -> Verdict:
    """Requests per second the gateway took on (answered anything but 429) from the noisy_client actions."""
    noisy = [n for n in p.drill.noisy_clients() if n.seconds > 0]
    seconds = sum(n.seconds for n in noisy)
    value = sum(n.accepted for n in noisy) / seconds if seconds else None
    by_status: dict[str, int] = {}
    for n in noisy:
        for k, v in n.by_status.items():
            by_status[k] = by_status.get(k, 0) + v
    detail: dict[str, Any] = {"by_status": by_status, "seconds": rounded(seconds, 2)}
    if value is None:
        detail["reason"] = "no noisy_client action ran"
    return Verdict(rounded(value, 2), p.tol_max, value is not None and value <= p.tol_max, detail)


def kb_switched(p: ProbeInput) -> Verdict:
    """KB switch drills: during the windows, the share of answers served by another version than the one
    at rest (the switch took effect); after, the share served by the version at rest again (the undo
    took effect)."""
    baseline = Counter(r.kb_version for r in p.all_records if r.kb_version and r.status == 200
                       and in_spans(r.t, p.drill.spans("before")))
    if not baseline:
        return Verdict(None, p.tol_min, False, {"reason": "no answer with a kb_version before the switch"})
    at_rest = baseline.most_common(1)[0][0]
    versions = Counter(r.kb_version for r in p.answers)
    served = [r.kb_version for r in p.answers if r.kb_version]
    hits = sum((v != at_rest) if p.phase == "during" else (v == at_rest) for v in served)
    value = hits / len(served) if served else None
    return Verdict(value, p.tol_min, value is not None and value >= p.tol_min,
                   {"at_rest": at_rest, "answers_by_version": dict(versions)})


def shared_state(p: ProbeInput) -> Verdict:
    """Share of the phase's samples whose /health ``shared_state`` status is one of ``expect``."""
    seen = [s.get("shared_state") for s in p.drill.samples if in_spans(s["t"], p.spans, p.probe.skip_s)]
    seen = [x for x in seen if x is not None]
    value = sum(x in p.tol.expect for x in seen) / len(seen) if seen else None
    return Verdict(value, p.tol_min, value is not None and value >= p.tol_min,
                   {"samples": len(seen), "statuses": dict(Counter(seen))})


EVALUATORS: dict[str, Callable[[ProbeInput], Verdict]] = {
    "availability": availability,
    "latency_p99": latency_p99,
    "mode": mode,
    "degraded_labelled": degraded_labelled,
    "upstream_attempts_ratio": upstream_attempts_ratio,
    "breaker_transitions": breaker_transitions,
    "hung_requests": hung_requests,
    "recovery_time": recovery_time,
    "degraded_rate": degraded_rate,
    "breaker_opened": breaker_opened,
    "breaker_closed": breaker_closed,
    "blame": blame,
    "resets_fired": resets_fired,
    "truncated_streams": truncated_streams,
    "kb_switched": kb_switched,
    "shared_state": shared_state,
    "upstream_concurrency": upstream_concurrency,
    "slow_headers_cut": slow_headers_cut,
    "noisy_client_accepted": noisy_client_accepted,
}
