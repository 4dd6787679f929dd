"""The scale-out section's ceiling: the most req/s a side can serve from its measured CPU per request."""
from __future__ import annotations

import pytest

from bench.scaleout import add_ceilings, ceiling_rps


def test_one_worker_is_bound_by_its_one_core_two_by_the_shared_cores() -> None:
    cpu = {"server": 0.5, "loadgen": 0.2, "standins": 0.0}
    assert ceiling_rps(cpu, 1, 2) == pytest.approx(2000.0)  # one process: at most one core
    # two workers: the 2 cores also carry the load generator, 0.7 ms per request in all
    assert ceiling_rps(cpu, 2, 2) == pytest.approx(2000 / 0.7, abs=0.1)


def test_the_load_generator_never_gets_more_than_one_core() -> None:
    assert ceiling_rps({"server": 0.1, "loadgen": 0.4, "standins": 0.0}, 2, 8) == pytest.approx(2500.0)


def test_ceilings_use_what_other_work_left() -> None:
    def side(server: float, others: float) -> dict:
        return {"cpu_ms_per_req": {"server": server, "loadgen": 0.2, "standins": 0.0},
                "box": {"others_cores": others}}

    res = {"floor_passthrough": side(0.2, 1.0), "workers_1": side(0.5, 1.0), "workers_2": side(0.5, 1.0)}
    add_ceilings(res, 2)
    assert res["workers_2"]["ceiling_rps"]["all_cores"] == pytest.approx(2000 / 0.7, abs=0.1)
    assert res["workers_2"]["ceiling_rps"]["cores_left_by_others"] == pytest.approx(1000 / 0.7, abs=0.1)
    # on what was left (1 core) a second worker cannot help: 2 vs 1 is 1000/0.7 over 1000/0.7
    assert res["ceiling_ratios"]["cores_left_by_others"]["2_vs_1"] == pytest.approx(1.0)
    assert res["ceiling_ratios"]["all_cores"]["2_vs_1"] == pytest.approx(round((2000 / 0.7) / 2000, 2))
