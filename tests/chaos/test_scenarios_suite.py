"""The chaos suite: every shipped scenario, drilled against the local stack, judged on measured properties.

Each drill is a real one (load over sockets, TCP toxics on the gateway's own connections, HTTP faults on
the stand-ins, breakers read from the admin API) with short fault windows and ``open_s`` = 2 s. A test
passes when the drill completed and every probe of its steady-state hypothesis held, and it checks on
its own, from the per-request journal, the properties no scenario file may weaken:

- 0 hung requests (every request finished within its deadline + slack);
- ≥ 99.5% answered without a 5xx;
- during the faults, the degraded answers name the broken dependency;
- the scenario still carries the probes that define it (e.g. the blackhole's p99 and attempt ratio).

``KNOWN_DEVIATIONS`` lists probes the gateway is known to miss today, with the reason; the test then
asserts they *still* fail, so fixing the gateway turns them into a reminder to remove the entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.drill import Drill
from chaos.scenario import all_scenarios, load_scenario
from tests.chaos.conftest import StackThread

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(90)]

KNOWN_DEVIATIONS: dict[str, dict[str, str]] = {}

# scenario → (component the degraded answers must name during the faults, probe types it must keep)
SUITE: dict[str, tuple[str | None, set[str]]] = {
    "vector_db_blackhole": ("vector_db", {"latency_p99", "upstream_attempts_ratio", "degraded_labelled",
                                           "breaker_opened", "blame"}),
    "vector_db_reset_peer": (None, {"breaker_transitions", "degraded_labelled", "resets_fired", "blame"}),
    "vector_db_latency_below_timeout": (None, {"mode", "breaker_transitions"}),
    "vector_db_latency_above_timeout": ("vector_db", {"latency_p99", "upstream_attempts_ratio", "breaker_opened"}),
    "vector_db_bandwidth_starved": ("vector_db", {"mode", "latency_p99", "breaker_opened"}),
    "messages_529_storm": ("llm", {"mode", "breaker_opened", "blame", "degraded_labelled"}),
    "llm_down_stale_answers": ("llm", {"mode", "blame"}),
    "embedder_hang": ("embedder", {"latency_p99", "breaker_opened", "blame"}),
    "embedder_down": ("embedder", {"mode", "upstream_attempts_ratio", "breaker_opened", "blame"}),
    "llm_rate_limited": ("llm", {"mode", "latency_p99"}),
    "llm_overloaded_storm": ("llm", {"mode", "upstream_attempts_ratio", "breaker_opened"}),
    "llm_hang": ("llm", {"degraded_rate", "hung_requests", "breaker_opened"}),
    "llm_stream_cut": ("llm", {"mode", "degraded_labelled"}),
    "llm_and_vector_db_down": ("vector_db", {"mode", "upstream_attempts_ratio", "breaker_opened"}),
    "vector_db_recovers": ("vector_db", {"recovery_time", "degraded_rate", "breaker_opened", "breaker_closed"}),
    "gateway_fault_injection": ("vector_db", {"mode", "upstream_attempts_ratio", "breaker_opened", "blame"}),
    "slow_clients": (None, {"availability", "latency_p99", "hung_requests"}),
}

# Shipped scenarios not drilled in `make test` (suite time, or a stack the shared one is not): each
# still passes `chaos validate` / the export tests; its recorded local run is in notes/issue-13.md.
NOT_DRILLED_IN_SUITE: dict[str, str] = {
    "redis_down": "needs the stack's Redis (chaos run --local starts it); 12 s drill",
    "redis_slow": "needs the stack's Redis (chaos run --local starts it); 10 s drill",
    "kb_switch_under_load": "needs two KB versions (chaos run --local ingests two)",
    "messages_stream_cut": "a cut after content ends in an honest `event: error`, which the suite's "
                           "generic ≥ 99.5 % check counts as unanswered; judged by its own probes",
    # Drills of the mutation table (make drill-mutants; make drill runs them unmutated): suite time.
    "llm_brownout": "mutation-table drill (bulkhead:llm), 22 req/s for 8 s: suite time on a shared 2-core box",
    "noisy_client": "mutation-table drill (rate_limit:clients), a 100 req/s flood: suite time and CPU",
    "vector_db_stays_down": "mutation-table drill (half_open:vector_db), 12 s: suite time",
}


def test_every_shipped_scenario_is_in_the_suite() -> None:
    assert {p.stem for p in all_scenarios()} == set(SUITE) | set(NOT_DRILLED_IN_SUITE)
    assert not set(SUITE) & set(NOT_DRILLED_IN_SUITE)


def _failed_probes(journal: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{phase}:{p['name']}": p for phase in ("before", "during", "after")
            for p in ((journal["steady_states"].get(phase) or {}).get("probes") or []) if not p["met"]}


def _explain(failed: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{k}: measured {p['value']} vs limit {p['limit']} {p['detail']}" for k, p in failed.items())


def _during(journal: dict[str, Any]) -> list[dict[str, Any]]:
    spans = [(w["start_s"], w["end_s"]) for w in journal["fault_windows"]]
    return [r for r in journal["requests"] if any(s <= r["t"] < e for s, e in spans)]


@pytest.mark.parametrize("name", list(SUITE))
async def test_scenario(name: str, chaos_stack: StackThread, tmp_path: Path) -> None:
    component, required_probes = SUITE[name]
    scenario = load_scenario(name, chaos_stack.variables())
    assert required_probes <= {p.type for p in scenario.steady_state_hypothesis.probes}, "scenario lost its probes"
    await chaos_stack.reset()

    journal = await Drill(scenario, chaos_stack.target(), out_dir=tmp_path, png=False).run()

    assert journal["status"] == "completed", f"{journal['error']}\n{chaos_stack.log_tail()}"
    assert not journal["cleanup_problems"]
    assert all(e["status"] == "succeeded" for e in journal["run"] + journal["rollbacks"]), journal["run"]
    requests = journal["requests"]
    assert [r for r in requests if r.get("error") == "hung"] == []
    answered = sum(1 for r in requests if r["status"] is not None and r["status"] < 500 and not r.get("error"))
    assert answered / len(requests) >= 0.995, journal["load"]["by_status"]
    if component is not None:
        degraded = [r for r in _during(journal) if r["degraded"]]
        assert degraded, "the fault degraded nothing"
        assert all(any(d.startswith(component) for d in r["degradations"]) for r in degraded), degraded[:3]

    failed = _failed_probes(journal)
    known = KNOWN_DEVIATIONS.get(name, {})
    unexpected = {k: v for k, v in failed.items() if k not in known}
    assert not unexpected, _explain(unexpected)
    fixed = set(known) - set(failed)
    assert not fixed, f"{sorted(fixed)} hold now: remove them from KNOWN_DEVIATIONS"
