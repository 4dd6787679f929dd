"""The blame probe judges degraded answers only: none degraded is nothing misblamed, a wrong name fails."""
from __future__ import annotations

from typing import Any

from chaos.load import RequestRecord
from chaos.probes import ProbeInput, blame
from chaos.scenario import Probe


class _Faulted:
    """The two DrillView methods the blame probe reads: the vector DB is the faulted dependency."""

    def blamed_components(self, dependency: str) -> set[str]:
        return {dependency}

    def all_faulted_components(self) -> set[str]:
        return {"vector_db"}


def _judge(answers: list[RequestRecord]) -> Any:
    probe = Probe(name="blame", type="blame", tolerance={"min": 0.95})
    view: Any = _Faulted()
    return blame(ProbeInput(probe=probe, phase="during", dependency="vector_db", spans=[], records=answers,
                            done=answers, answers=answers, all_records=answers, drill=view))


def _answer(i: int, *components: str) -> RequestRecord:
    return RequestRecord(i=i, t=0.0, stream=False, status=200, mode="keyword_fallback" if components else "full",
                         degraded=bool(components),
                         degradations=[{"component": c, "reason": "error"} for c in components])


def test_no_degraded_answer_is_nothing_misblamed() -> None:
    verdict = _judge([_answer(0), _answer(1)])
    assert verdict.met and verdict.value is None and verdict.detail["degraded"] == 0


def test_degradations_naming_a_healthy_dependency_fail() -> None:
    verdict = _judge([_answer(0, "vector_db"), _answer(1, "embedder")])
    assert not verdict.met and verdict.value == 0.5 and verdict.detail["misblamed"] == ["request 1: ['embedder']"]


def test_degradations_naming_the_faulted_dependency_pass() -> None:
    assert _judge([_answer(0, "vector_db"), _answer(1, "vector_db")]).met
