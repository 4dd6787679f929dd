"""Two mutants inside ``make test`` (the full table is ``make drill-mutants``): with the vector DB breaker
disabled by configuration, the blackhole drill must fail — and fail on the breaker's own probe; with the
primary model's fallback chain emptied (issue 10's failover on /v1/messages), the 529-storm drill must
fail on what clients got."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.drill import Drill
from chaos.mutants import MUTANTS
from chaos.scenario import load_scenario
from gateway.config import Settings
from tests.chaos.conftest import OPEN_S, StackThread

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


def test_every_mechanism_has_a_mutant_and_a_drill() -> None:
    mechanisms = {m.name.split(":")[0] for m in MUTANTS}
    assert mechanisms == {"breaker", "timeout", "fallback", "failover", "bulkhead", "half_open", "retry_budget",
                          "header_timeout", "rate_limit", "redis_budget"}
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert m.scenarios, m.name
        for name in m.scenarios:
            load_scenario(name)  # every named drill exists and validates
        Settings.model_validate(m.overrides)  # a valid config: a typo would fail the stack, not a drill


async def _drill_mutant(mutant_name: str, scenario: str, workdir: Path) -> dict[str, Any]:
    """The journal of ``scenario`` drilled against a local stack running mutant ``mutant_name``."""
    [mutant] = [m for m in MUTANTS if m.name == mutant_name]
    stack = StackThread(workdir, open_s=OPEN_S, overrides=mutant.overrides)
    try:
        stack.start()
        await stack.reset()
        return await Drill(load_scenario(scenario, stack.variables()), stack.target(), out_dir=None, png=False).run()
    finally:
        stack.stop()


async def test_blackhole_drill_kills_the_vector_db_breaker_mutant(tmp_path: Path) -> None:
    journal = await _drill_mutant("breaker:vector_db", "vector_db_blackhole", tmp_path / "stack")
    failed = {p["type"] for p in journal["steady_states"]["during"]["probes"] if not p["met"]}
    assert journal["verdict"] != "pass"
    assert "breaker_opened" in failed, journal["steady_states"]["during"]["probes"]


async def test_529_storm_drill_kills_the_messages_failover_mutant(tmp_path: Path) -> None:
    journal = await _drill_mutant("failover:messages", "messages_529_storm", tmp_path / "stack")
    during = {p["type"]: p for p in journal["steady_states"]["during"]["probes"]}
    assert journal["verdict"] != "pass"
    # No model left to fail over to: the clients get the primary's 529s (the safeguard ends the storm early).
    assert not during["availability"]["met"] and during["availability"]["value"] < 0.5, during["availability"]
    assert not during["mode"]["met"], during["mode"]
