"""Two gateway replicas with the Redis answer cache (a real redis-server on loopback): an answer made on
one is a fresh hit on the other; Redis down → each answers from its local cache, labelled, never a 5xx."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import anthropic_overrides, make_settings, state_of

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]
QUERY = {"query": "What temperature should water be for green tea?"}


@pytest.fixture
async def replicas(tmp_path, data_dir, gateway_factory, fake_anthropic, redis_url):
    out = []
    for name in ("a", "b"):
        d = tmp_path / name
        shutil.copytree(data_dir, d)
        out.append(await gateway_factory(make_settings(d, **anthropic_overrides(fake_anthropic, **{
            "cache.backend": "redis", "cache.redis_url": redis_url,
            "cache.redis_timeout_s": 2.0}))))
    return out


async def ask(client) -> dict:
    resp = await client.post("/v1/query", json=QUERY)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_an_answer_made_on_one_replica_is_a_hit_on_the_other(replicas, fake_anthropic):
    a, b = replicas
    first = await ask(a)
    assert first["mode"] == "full"
    calls = fake_anthropic.requests_total
    body = await ask(b)
    assert body["mode"] == "cached" and body["degraded"] is False and body["answer"] == first["answer"]
    assert fake_anthropic.requests_total == calls  # B never called the LLM
    health = await (await b.get("/health")).json()
    assert health["components"]["answer_cache"]["backend"] == "redis"
    assert health["components"]["answer_cache"]["serving"] == "redis"


async def test_redis_down_serves_the_local_cache_labelled_no_5xx(replicas, fake_anthropic, redis_server):
    a, _ = replicas
    first = await ask(a)
    redis_server.stop()
    calls = fake_anthropic.requests_total
    body = await ask(a)  # Redis refused → A's written-through local copy is a fresh hit
    assert body["mode"] == "cached" and body["answer"] == first["answer"]
    assert fake_anthropic.requests_total == calls
    other = await ask_other(a)  # a new question: answered by the LLM, cached locally
    assert other["mode"] == "full"
    health = await (await a.get("/health")).json()
    assert "answer_cache:local_only" in health["degraded_components"]
    assert health["components"]["answer_cache"]["status"] == "degraded"
    assert health["components"]["answer_cache"]["serving"] == "local"
    assert state_of(a).cache.errors >= 1


async def ask_other(client) -> dict:
    resp = await client.post("/v1/query", json={"query": "how long should black tea steep"})
    assert resp.status == 200
    return await resp.json()
