"""The response vocabulary (gateway/contract.py) is complete and nothing outside it is emitted.

The catalogue check reads the source: every mode, component and reason the gateway and the chaos tools
write (``trace.degrade``, ``telemetry.degradation``, ``contract.degradation``, ``X-RAG-Mode`` /
``"mode"`` literals, enum members) must be declared, and every declared mode must be produced somewhere.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

from gateway import contract
from gateway.app import build_guards
from gateway.config import Settings
from gateway.contract import MESSAGES_MODES, QUERY_MODES, Component, Mode, Reason
from gateway.telemetry import MODES as TELEMETRY_MODES
from gateway.telemetry import Telemetry
from chaos.scenario import MODES as SCENARIO_MODES
from resilience import Reason as GuardReason
from resilience.ratelimit import Decision

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("gateway", "chaos", "fallback", "resilience") for p in (ROOT / d).rglob("*.py"))
ENUMS = {"Mode": Mode, "Component": Component, "Reason": Reason}
EMITTERS = {"degrade": (Component, Reason), "degradation": (Component, Reason)}


def _enum_member(node: ast.expr) -> tuple[str, str] | None:
    """``Mode.FULL`` / ``contract.Reason.STALE`` → ("Mode", "FULL")."""
    if isinstance(node, ast.Attribute) and node.attr.isupper():
        base = node.value
        name = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else None
        if name in ENUMS:
            return name, node.attr
    return None


def _catalogue_violations(sources: list[Path], root: Path) -> list[str]:
    problems = []
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root)
        in_resilience = rel.parts[0] == "resilience"  # its own Reason enum, a subset (checked below)
        for node in ast.walk(tree):
            member = _enum_member(node) if isinstance(node, ast.Attribute) else None
            if member and not in_resilience and member[1] not in ENUMS[member[0]].__members__:
                problems.append(f"{rel}:{node.lineno}: {member[0]}.{member[1]} is not declared")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EMITTERS:
                for arg, enum in zip(node.args[:2], EMITTERS[node.func.attr]):
                    if isinstance(arg, ast.Constant) and arg.value not in enum.__members__.values():
                        problems.append(f"{rel}:{node.lineno}: {enum.__name__} {arg.value!r} is not declared")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (isinstance(key, ast.Constant) and key.value in ("mode", "X-RAG-Mode")
                            and isinstance(value, ast.Constant) and isinstance(value.value, str)
                            and value.value not in Mode.__members__.values()):
                        problems.append(f"{rel}:{node.lineno}: mode {value.value!r} is not declared")
    return problems


def test_every_emitted_mode_component_and_reason_is_declared():
    assert _catalogue_violations(SOURCES, ROOT) == []


def test_the_catalogue_check_catches_an_undeclared_reason(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('trace.degrade("keyword_index", "flaky")\nx = Mode.RETRIEVAL_ONLY\n'
                   'h = {"X-RAG-Mode": "partial"}\n')
    found = _catalogue_violations([bad], tmp_path)
    assert len(found) == 3 and "'flaky'" in found[0] and "RETRIEVAL_ONLY" in "".join(found) and "'partial'" in found[-1]


def test_every_declared_mode_is_produced_somewhere():
    """A declared mode nobody produces (the old ``retrieval_only``) is a promise the API does not keep."""
    assert set(QUERY_MODES) | set(MESSAGES_MODES) == set(Mode)
    producers = {m: set() for m in Mode}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            member = _enum_member(node) if isinstance(node, ast.Attribute) else None
            if member and member[0] == "Mode":
                producers[Mode[member[1]]].add(path.relative_to(ROOT).as_posix())
    for mode in QUERY_MODES:
        assert producers[mode] & {"gateway/pipeline.py", "gateway/routes/query.py"}, mode
    for mode in MESSAGES_MODES:
        assert "gateway/routes/messages.py" in producers[mode], mode


def test_guard_reasons_and_names_are_part_of_the_vocabulary():
    assert {r.value for r in GuardReason} <= set(Reason)
    guards = build_guards(Settings(), Telemetry(None, flush_interval_s=0))
    assert {g.name for g in guards} <= set(Component)


def test_metrics_scenarios_and_readme_use_the_same_words():
    assert set(TELEMETRY_MODES) == set(Mode) | {"none"}  # what the client was told: /v1/messages too
    assert set(SCENARIO_MODES) == set(Mode)  # drills load /v1/query and /v1/messages
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for word in (*Mode, *Component, *Reason):
        assert f"`{word}`" in readme or f"|{word}" in readme or f"{word}|" in readme, f"README does not explain {word}"


def test_enums_serialise_as_plain_strings():
    assert json.dumps({"mode": Mode.KEYWORD_FALLBACK}) == '{"mode": "keyword_fallback"}'
    assert f"{Reason.STALE_ANSWER}" == str(Reason.STALE_ANSWER) == "stale_answer"
    assert contract.degradation(Component.LLM, GuardReason.TIMEOUT, model="m", age_s=None) == \
        {"component": "llm", "reason": "timeout", "model": "m"}
    assert type(contract.degradation(Component.LLM, GuardReason.TIMEOUT)["reason"]) is str


def test_body_and_headers():
    degs = [contract.degradation("vector_db", Reason.BREAKER_OPEN)]
    b = contract.body(answer="a", mode=Mode.KEYWORD_FALLBACK, degradations=degs, sources=[], kb_version="v1",
                      request_id="r", timings_ms={"total": 1.25}, answer_age_s=1.23456)
    assert (b["degraded"], b["answer_age_s"], "model" in b, "error" in b, "chunks" in b) == (True, 1.235, False,
                                                                                            False, False)
    assert contract.body(answer=None, mode=Mode.UNAVAILABLE, degradations=[], sources=[], kb_version=None,
                         request_id="r", timings_ms={})["degraded"] is True
    h = contract.headers(Mode.FULL, degraded=False, request_id="r", timings_ms={"retrieve": 3.14, "total": 9.0})
    assert h == {"X-Request-Id": "r", "X-RAG-Mode": "full", "X-RAG-Degraded": "false",
                 "Server-Timing": "retrieve;dur=3.1, total;dur=9.0"}
    assert type(h["X-RAG-Mode"]) is str
    h = contract.headers(Mode.FALLBACK_MODEL, degraded=True, request_id="r", degradations=degs, retry_after_s=0.2)
    assert json.loads(h["X-RAG-Degradations"]) == degs and h["Retry-After"] == "1"
    assert "X-RAG-Degradations" not in contract.headers(Mode.FULL, degraded=False, request_id="r", degradations=[])


def test_retry_after_rounds_up_to_whole_seconds_like_the_rate_limiter():
    for seconds, want in ((0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0005, "2"), (2.5, "3"), (30.0, "30")):
        assert contract.retry_after(seconds) == want, seconds
        assert Decision(False, 0, 1, 1.0, seconds).headers()["Retry-After"] == want
