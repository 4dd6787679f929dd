"""The generation ladder through the real anthropic client and the fake Anthropic over sockets:
primary → fallback model → cached answer (stale-if-error) → extractive answer, each labelled."""
from __future__ import annotations

import json

from tests.conftest import anthropic_overrides, make_settings, state_of


async def _ask(client, query="What temperature should water be for green tea?", **kw):
    resp = await client.post("/v1/query", json={"query": query, **kw})
    return resp, await resp.json()


async def test_full_answer_from_the_llm(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    resp, body = await _ask(client)
    assert resp.status == 200
    assert body["mode"] == "full" and body["degraded"] is False and body["model"] == "claude-sonnet-4-6"
    # The stand-in quotes the first sentence of passage [1]: the tea chunk must be first.
    assert body["answer"].startswith("# Brewing green tea") and body["answer"].endswith("[1]")
    assert fake_anthropic.model_counts["claude-sonnet-4-6"] == 1


async def test_request_id_reaches_the_llm(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    await client.post("/v1/query", json={"query": "green tea"}, headers={"X-Request-Id": "rid-42"})
    headers = {k.lower(): v for k, v in fake_anthropic.requests[-1].headers.items()}
    assert headers["x-request-id"] == "rid-42"


async def test_primary_overloaded_falls_back_to_the_second_model(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    fake_anthropic.set_faults(status=529, models=["claude-sonnet-4-6"])
    resp, body = await _ask(client)
    assert resp.status == 200
    assert body["mode"] == "full" and body["degraded"] is True and body["model"] == "claude-haiku-4-5"
    assert {"component": "llm", "reason": "overloaded", "model": "claude-sonnet-4-6"} in body["degradations"]
    assert resp.headers["X-RAG-Degraded"] == "true"


async def test_llm_down_without_cache_gives_an_extractive_answer(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    fake_anthropic.set_faults(status=500)
    resp, body = await _ask(client)
    assert resp.status == 200
    assert body["mode"] == "extractive" and body["degraded"] is True
    assert [d["component"] for d in body["degradations"]] == ["llm", "llm_fallback"]
    assert "[1]" in body["answer"] and body["sources"][0]["source"] == "tea.md"


async def test_extractive_off_gives_a_labelled_503_instead(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"fallback.extractive": False})))
    fake_anthropic.set_faults(status=500)
    resp, body = await _ask(client)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert body["mode"] == "unavailable" and body["degraded"] is True and body["answer"] is None
    assert [d["component"] for d in body["degradations"]] == ["llm", "llm_fallback"]
    assert "fallback.extractive" in body["error"]["message"]


async def test_extractive_off_ends_a_discarded_stream_with_an_unavailable_done(gateway_factory, data_dir,
                                                                             fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"llm.fallback_model": None, "fallback.extractive": False})))
    fake_anthropic.set_faults(stream_cut_after=5)
    resp = await client.post("/v1/query", json={"query": "How long should green tea steep?", "stream": True})
    kinds, done = [], None
    for block in (await resp.text()).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        kinds.append(lines["event"])
        done = json.loads(lines["data"])
    assert "discard" in kinds and kinds[-1] == "done"  # never a stream that just stops
    assert done["mode"] == "unavailable" and done["degraded"] is True and done["answer"] is None
    assert done["degradations"][0]["reason"] == "stream_cut"


async def test_llm_down_serves_the_stale_cached_answer(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(
        data_dir, **anthropic_overrides(fake_anthropic, **{"cache.fresh_ttl_s": 0})))
    import time

    _, good = await _ask(client)
    answered_at = time.time()
    assert good["mode"] == "full"
    fake_anthropic.set_faults(status=529)
    resp, body = await _ask(client, query="  what temperature should water be for GREEN tea  ")
    assert resp.status == 200
    assert body["mode"] == "cached" and body["degraded"] is True
    assert body["answer"] == good["answer"]
    assert time.time() - answered_at + 0.01 >= body["answer_age_s"] > 0
    assert body["sources"] == good["sources"]  # the stale answer cites what it cited then
    assert body["degradations"][-1]["component"] == "answer_cache"
    assert body["degradations"][-1]["reason"] == "stale_answer"


async def test_fresh_cache_hit_skips_the_llm(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    _, first = await _ask(client)
    calls = fake_anthropic.requests_total
    resp, body = await _ask(client)
    assert body["mode"] == "cached" and body["degraded"] is False and body["answer"] == first["answer"]
    assert fake_anthropic.requests_total == calls
    assert resp.headers["X-RAG-Mode"] == "cached"


async def test_llm_hang_is_cut_by_the_deadline(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"resilience.llm.timeout_s": 0.3, "resilience.llm.retry.max_attempts": 1})))
    fake_anthropic.set_faults(hang=True)
    resp, body = await _ask(client)
    assert resp.status == 200 and body["mode"] == "extractive"
    assert {d["reason"] for d in body["degradations"]} == {"timeout"}
    assert body["timings_ms"]["total"] < 2000


async def test_stream_cut_mid_answer_is_discarded_and_replaced(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"llm.fallback_model": None})))
    fake_anthropic.set_faults(stream_cut_after=5)
    resp = await client.post("/v1/query", json={"query": "How long should green tea steep?", "stream": True})
    events = []
    for block in (await resp.text()).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    kinds = [k for k, _ in events]
    assert "discard" in kinds and kinds[-1] == "done"
    done = events[-1][1]
    assert done["mode"] == "extractive" and done["degraded"] is True
    assert done["degradations"][0]["reason"] == "stream_cut"
    after = "".join(d["text"] for k, d in events[kinds.index("discard"):] if k == "delta")
    assert after == done["answer"]


async def test_stream_full_path(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    resp = await client.post("/v1/query", json={"query": "How long should green tea steep?", "stream": True})
    blocks = (await resp.text()).strip().split("\n\n")
    events = [(dict(line.split(": ", 1) for line in b.splitlines())) for b in blocks]
    deltas = [json.loads(e["data"])["text"] for e in events if e["event"] == "delta"]
    done = json.loads(events[-1]["data"])
    assert len(deltas) > 1 and "".join(deltas) == done["answer"]
    assert done["mode"] == "full" and done["degraded"] is False
    assert state_of(client).cache is not None


async def test_degraded_answers_are_not_cached(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    fake_anthropic.set_faults(status=529, models=["claude-sonnet-4-6"])
    _, degraded = await _ask(client)
    assert degraded["degraded"] is True and degraded["model"] == "claude-haiku-4-5"
    fake_anthropic.clear_faults()
    resp, body = await _ask(client)
    # Not a cache hit dressed as healthy: the primary answers now.
    assert body["mode"] == "full" and body["degraded"] is False and body["model"] == "claude-sonnet-4-6"
