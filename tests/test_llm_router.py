"""The model ladder and its per-model guard registry (no network)."""
from __future__ import annotations

from gateway.config import load_settings
from gateway.llm_router import ModelRouter
from resilience.config import GuardConfig
from resilience.registry import KeyedGuards


def router(**overrides) -> ModelRouter:
    s = load_settings(None, env={}, overrides={"llm.base_url": "http://llm.local", **overrides})
    return ModelRouter(s.llm, KeyedGuards(GuardConfig(), max_guards=3))


def test_chains_per_model_default_and_context_window():
    r = router(**{"llm.fallbacks": {"a": ["b", "a", "b", "c"]}, "llm.default_fallbacks": ["z"],
                  "llm.context_window_fallbacks": {"a": ["a-1m"]}})
    assert [t.model for t in r.chain("a")] == ["a", "b", "c"]  # itself and duplicates dropped
    assert [t.model for t in r.chain("q")] == ["q", "z"]
    assert [t.model for t in r.chain("z")] == ["z"]  # the fallback requested directly has no rung left
    assert [(t.model, t.component) for t in r.context_chain("a")] == [("a-1m", "llm_context_window")]
    assert r.context_chain("b") == []
    assert [t.component for t in r.chain("a")] == ["llm", "llm_fallback", "llm_fallback"]


def test_one_guard_per_model_and_endpoint():
    r = router(**{"llm.endpoints": {"c": {"base_url": "http://other.local:9", "api_key": "sk-ant-other-000000"}}})
    a, a2, c = r.target("a"), r.target("a"), r.target("c")
    assert a.guard is a2.guard and a.guard is not c.guard
    assert a.guard.name == "llm:a" and c.guard.name == "llm:c@other.local:9" and c.api_key == "sk-ant-other-000000"


def test_the_registry_is_bounded_and_never_drops_an_open_guard():
    r = router()
    opened = r.target("m0").guard
    opened.breaker.force_open()
    for i in range(1, 6):
        r.target(f"m{i}")
    names = {g.name for g in r.guards}
    assert len(names) == 3 and "llm:m0" in names  # LRU: idle closed ones went, the open one stayed
    assert r.target("m0").guard is opened and r.guards.evicted == 3
    assert r.chain("m5")[0].guard is r.target("m5").guard  # a cached chain follows evictions


def test_a_failing_models_count_survives_a_flood_of_other_model_names():
    # Before: evicting a closed guard forgot its failures, so a client cycling through made-up model names
    # (each gets a guard) reset a failing model's count and its breaker never opened.
    r = router()
    failing = r.target("m0").guard
    threshold = failing.breaker.config.failure_threshold
    for _ in range(threshold - 1):
        failing.breaker.acquire().failure(0.01)  # type: ignore[union-attr]
    for i in range(1, 20):
        r.target(f"made-up-{i}")
    assert r.target("m0").guard is failing
    failing.breaker.acquire().failure(0.01)  # type: ignore[union-attr]
    assert failing.breaker.state == "open"


def test_failing_idle_guards_are_kept_only_up_to_twice_the_bound():
    r = router()  # max_guards=3
    for i in range(10):
        g = r.target(f"m{i}").guard
        g.breaker.acquire().failure(0.01)  # type: ignore[union-attr]
    assert len(r.guards) == 6
