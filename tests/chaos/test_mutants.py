"""One mutant inside ``make test`` (the full table is ``make drill-mutants``): with the vector DB breaker
disabled by configuration, the blackhole drill must fail — and fail on the breaker's own probe."""
from __future__ import annotations

from pathlib import Path

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
                          "header_timeout", "rate_limit"}
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert m.scenarios, m.name
        for name in m.scenarios:
            load_scenario(name)  # every named drill exists and validates
        Settings.model_validate(m.overrides)  # a valid config: a typo would fail the stack, not a drill


async def test_blackhole_drill_kills_the_vector_db_breaker_mutant(tmp_path: Path) -> None:
    [mutant] = [m for m in MUTANTS if m.name == "breaker:vector_db"]
    stack = StackThread(tmp_path / "stack", open_s=OPEN_S, overrides=mutant.overrides)
    try:
        stack.start()
        await stack.reset()
        journal = await Drill(load_scenario("vector_db_blackhole", stack.variables()), stack.target(),
                              out_dir=None, png=False).run()
    finally:
        stack.stop()
    failed = {p["type"] for p in journal["steady_states"]["during"]["probes"] if not p["met"]}
    assert journal["verdict"] != "pass"
    assert "breaker_opened" in failed, journal["steady_states"]["during"]["probes"]
