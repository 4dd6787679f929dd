"""Issue 11 item 2: a timeout the caller's own budget caused is not the dependency's failure.

Before: five requests with ``X-Request-Timeout: 0.8`` against an LLM that answers in 0.6 s opened the
LLM breaker for everyone (each got ~0.5 s for the LLM after retrieval and the fallback reserve).
"""
from __future__ import annotations

from tests.conftest import anthropic_overrides, make_settings, state_of


async def test_short_client_budgets_do_not_open_the_llm_breaker(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"cache.enabled": False, "llm.fallback_model": None,
                           "resilience.llm.breaker.failure_threshold": 3})))
    fake_anthropic.set_faults(latency_s=0.6)
    for _ in range(5):
        resp = await client.post("/v1/query", json={"query": "green tea"}, headers={"X-Request-Timeout": "0.8"})
        body = await resp.json()
        assert resp.status == 200 and body["mode"] == "extractive"
        assert {"component": "llm", "reason": "timeout", "model": "claude-sonnet-4-6"} in body["degradations"]
    llm = state_of(client).llm_router.target("claude-sonnet-4-6").guard.breaker.snapshot()
    assert llm["state"] == "closed" and llm["totals"]["failures"] == 0
    # A caller with the default budget still gets the full answer.
    resp = await client.post("/v1/query", json={"query": "green tea"})
    assert (await resp.json())["mode"] == "full"
