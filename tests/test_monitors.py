"""Each Datadog monitor fires on the failure it is named for, and stays quiet on a healthy sidecar.

The series are what a local-stack sidecar really sent over DogStatsD during a drill, recorded by
``python -m chaos.record chaos/recordings/<recipe>.yaml --out tests/data/monitor_series/<recipe>.jsonl.gz``;
the monitors' queries and thresholds run over them with :func:`gateway.telemetry.monitors.evaluate`
(a per-second model of Datadog's evaluation, stepped every 10 s through the recording). Where a
monitor used to be wrong, the old query is run too, to show the recording tells them apart.
"""
from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gateway.telemetry.monitors import Recording, Verdict, evaluate, groups_seen, read_recording, worst_state

ROOT = Path(__file__).resolve().parent.parent
SERIES = Path(__file__).parent / "data" / "monitor_series"
MONITORS = json.loads((ROOT / "deploy" / "datadog" / "monitors.json").read_text(encoding="utf-8"))


@cache
def recording(name: str) -> Recording:
    return read_recording(SERIES / f"{name}.jsonl.gz")


def monitor(component: str) -> dict[str, Any]:
    [found] = [m for m in MONITORS if f"component:{component}" in m["tags"]]
    return found


def with_query(m: dict[str, Any], query: str, **thresholds: float) -> dict[str, Any]:
    out = copy.deepcopy(m)
    out["query"] = query
    out["options"]["thresholds"] = thresholds or out["options"]["thresholds"]
    return out


# (monitor component, the recording of its failure, the group that must alert)
FIRES_ON = [
    ("breaker", "vector_db_hang", ("vector_db", "drill", "rag-sidecar")),
    ("pipeline", "vector_db_hang", ("drill", "rag-sidecar")),
    ("errors", "ladder_exhausted", ("drill", "rag-sidecar")),
    ("latency", "llm_slow_with_4xx_flood", ("drill", "rag-sidecar")),
    ("cache", "llm_down_stale_answers", ("drill", "rag-sidecar")),
    ("kb", "kb_week_old", ("drill", "rag-sidecar")),
    ("streams", "messages_stream_cut", ("drill", "rag-sidecar", "claude-sonnet-4-6")),
]


@pytest.mark.parametrize(("component", "failing", "group"), FIRES_ON, ids=[f[0] for f in FIRES_ON])
def test_monitor_alerts_on_its_failure(component, failing, group):
    state, where = worst_state(monitor(component), recording(failing).points)
    assert state == "Alert" and where["group"] == group, where


@pytest.mark.parametrize("component", [f[0] for f in FIRES_ON])
def test_monitor_stays_quiet_on_a_healthy_sidecar(component):
    """Six minutes of a healthy sidecar, its start-up (/readyz 503s) and a client sending malformed bodies."""
    state, where = worst_state(monitor(component), recording("healthy").points)
    assert state == "OK", where


def test_breaker_monitor_survives_half_open_probes_where_the_state_gauge_did_not():
    """A hanging vector DB for 5.5 minutes: every 2 s a half-open probe moves the state gauge to 1, so the
    old ``min(last_5m) of state >= 2`` never reached critical; ``breaker.open_for`` keeps counting."""
    points = recording("vector_db_hang").points
    old = with_query(monitor("breaker"), "min(last_5m):max:rag.breaker.state{*} by {dependency,env,service} >= 2",
                     critical=2, warning=1)
    old_state, _ = worst_state(old, points)
    assert old_state != "Alert"
    probes = [p for p in points if p.name == "rag.breaker.state" and p.tag["dependency"] == "vector_db"
              and p.values == (1.0,)]
    assert probes, "the recording has no half-open sample: it would not show the difference"
    state, where = worst_state(monitor("breaker"), points)
    assert state == "Alert" and where["value"] >= 300


def test_p99_monitor_reads_answers_not_4xx():
    """Slow (6 s) answers drowned in sub-millisecond 422s: the old query's p99 is a 422's latency."""
    points = recording("llm_slow_with_4xx_flood").points
    old = with_query(monitor("latency"),
                     "percentile(last_10m):p99:rag.request.duration{route:/v1/query} by {env,service} > 5000",
                     critical=5000, warning=3000)
    assert worst_state(old, points)[0] == "OK"
    assert worst_state(monitor("latency"), points)[0] == "Alert"


def test_5xx_monitor_ignores_start_up_readiness_probes():
    points = recording("healthy").points
    readyz_503 = [p for p in points if p.name == "rag.request.count" and p.tag.get("route") == "/readyz"
                  and p.tag.get("status") == "503"]
    assert readyz_503, "the recording has no start-up 503: it would not show the difference"
    old = with_query(monitor("errors"), "sum(last_5m):100 * sum:rag.request.count{status_class:5xx} by {env,service}"
                     ".as_count() / sum:rag.request.count{*} by {env,service}.as_count() > 5", critical=5, warning=1)
    # The recorded start-up is short (a few 503s before traffic): the old query warns on it; a longer
    # KB load under readiness probes with no traffic routed yet makes it 100 % 5xx.
    assert worst_state(old, points)[0] in ("Warn", "Alert")
    assert worst_state(monitor("errors"), points)[0] == "OK"


@pytest.mark.parametrize("component", ["breaker", "kb"])
def test_silence_means_death(component):
    """The sidecar stops (the recording ends): ten minutes later the gauge monitors go No Data."""
    m = monitor(component)
    assert m["options"]["notify_no_data"] is True
    points = recording("healthy").points
    end = recording("healthy").end_t
    verdicts = evaluate(m, points, end + m["options"]["no_data_timeframe"] * 60 + 30,
                        first_seen=groups_seen(m, points))
    assert verdicts and {v.state for v in verdicts.values()} == {"No Data"}
    alive = evaluate(m, points, end, first_seen=groups_seen(m, points))
    assert "No Data" not in {v.state for v in alive.values()}


def test_rate_monitors_do_not_page_on_a_quiet_night():
    """No traffic is not death: only the monitors on always-sent gauges notify on no data."""
    for m in MONITORS:
        gauges = "rag.breaker.open_for" in m["query"] or "rag.kb.age" in m["query"]
        assert m["options"]["notify_no_data"] is gauges, m["name"]


def test_stream_monitor_counts_breaks_not_clients_leaving():
    """The same recorded traffic with its cut streams relabelled: healthy (complete) or the client going
    away mid-stream or reset for not reading (client_gone / client_slow, not the model's failure) must leave
    the monitor OK, for the same group."""
    import dataclasses

    points = recording("messages_stream_cut").points
    for outcome in ("complete", "client_gone", "client_slow"):
        relabelled = [dataclasses.replace(p, tags=tuple((k, outcome if (k, v) == ("outcome", "cut") else v)
                                                        for k, v in p.tags)) for p in points]
        state, where = worst_state(monitor("streams"), relabelled)
        assert state == "OK", (outcome, where)
        end = recording("messages_stream_cut").end_t
        verdicts = evaluate(monitor("streams"), relabelled, end, first_seen=groups_seen(monitor("streams"), relabelled))
        assert verdicts == {("drill", "rag-sidecar", "claude-sonnet-4-6"): Verdict("OK", 0.0)}, outcome
    assert worst_state(monitor("streams"), points)[0] == "Alert"
