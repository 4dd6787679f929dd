"""The job-queue monitor (deploy/datadog/monitors.json, component:jobs) alerts on a queue that stopped
moving and stays quiet on one that drains, evaluated like the other monitors (gateway.telemetry.monitors).
The series are the gauge lines the exporter sends every flush, laid out in time (a 20-minute stall cannot
be recorded in a test run)."""
from __future__ import annotations

import json
from pathlib import Path

from gateway.telemetry.monitors import parse_line, read_recording, worst_state

ROOT = Path(__file__).resolve().parents[2]
[MONITOR] = [m for m in json.loads((ROOT / "deploy/datadog/monitors.json").read_text()) if "component:jobs" in m["tags"]]
TAGS = "#env:drill,service:rag-sidecar,version:recorded"


def gauge_series(age_at) -> list:
    """``rag.jobs.queue.oldest_age`` every 10 s for 25 minutes; ``age_at(t)`` gives its value."""
    return [parse_line(float(t), f"rag.jobs.queue.oldest_age:{age_at(t):g}|g|{TAGS}") for t in range(0, 1500, 10)]


def test_alerts_when_the_oldest_query_keeps_waiting():
    state, where = worst_state(MONITOR, gauge_series(lambda t: t))  # nothing runs: age grows with time
    assert state == "Alert" and where["group"] == ("drill", "rag-sidecar"), where


def test_quiet_while_the_queue_drains_and_on_a_healthy_sidecar():
    state, where = worst_state(MONITOR, gauge_series(lambda t: t % 120))  # a batch every 2 min, drained
    assert state == "OK", where
    healthy = read_recording(ROOT / "tests/data/monitor_series/healthy.jsonl.gz")
    assert worst_state(MONITOR, healthy.points)[0] == "OK"
