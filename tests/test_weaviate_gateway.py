"""The gateway with backend=weaviate and llm=anthropic: the real weaviate-client and anthropic clients
talk to the stand-ins over sockets; the vector DB's failures step down to the local keyword index."""
from __future__ import annotations

import pytest

from tests.conftest import anthropic_overrides, ingest_into, make_settings, weaviate_overrides


@pytest.fixture
async def stack(tmp_path, gateway_factory, fake_weaviate, fake_anthropic, fake_embeddings):
    overrides = {**weaviate_overrides(fake_weaviate), **anthropic_overrides(fake_anthropic),
                 "embedder.backend": "openai", "embedder.url": fake_embeddings.url + "/v1",
                 "resilience.vector_db.timeout_s": 0.5, "cache.enabled": False}
    settings = make_settings(tmp_path / "data", **overrides)
    await ingest_into(settings)
    client = await gateway_factory(settings)
    return client, fake_weaviate, fake_anthropic


async def test_query_through_weaviate_and_anthropic(stack):
    client, weaviate, anthropic = stack
    resp = await client.post("/v1/query", json={"query": "green tea steeping time and water temperature"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["mode"] == "full" and body["degraded"] is False
    # Weaviate's own hybrid query (BM25 + vector, fused server-side) is the normal path.
    assert body["sources"][0]["retriever"] == "hybrid" and body["sources"][0]["source"] == "tea.md"
    assert weaviate.search_calls >= 1 and anthropic.model_counts["claude-sonnet-4-6"] == 1
    assert "[1]" in body["answer"]


@pytest.mark.parametrize("fault,reason", [({"status": 503}, "error"), ({"hang": True}, "timeout"),
                                          ({"latency_s": 2.0}, "timeout"), ({"status": 429}, "rate_limited"),
                                          ({"reset": True}, "error")])
async def test_vector_db_failure_falls_back_to_keyword_search(stack, fault, reason):
    client, weaviate, _ = stack
    weaviate.set_faults(**fault)
    resp = await client.post("/v1/query", json={"query": "green tea steeping time"})
    body = await resp.json()
    assert resp.status == 200
    assert body["mode"] == "keyword_fallback" and body["degraded"] is True
    assert body["degradations"][0] == {"component": "vector_db", "reason": reason}
    assert body["sources"] and {s["retriever"] for s in body["sources"]} == {"bm25"}
    assert body["sources"][0]["source"] == "tea.md"
    assert resp.headers["X-RAG-Mode"] == "keyword_fallback"
    assert body["timings_ms"]["total"] < 1500  # per-attempt timeout 0.5 s, never the client's ~63 s retries


async def test_embedder_down_skips_the_vector_db(stack, fake_embeddings):
    client, weaviate, _ = stack
    fake_embeddings.set_faults(status=500)
    before = weaviate.search_calls
    body = await (await client.post("/v1/query", json={"query": "shield volcano lava"})).json()
    assert body["mode"] == "keyword_fallback" and body["degraded"] is True
    assert body["degradations"] == [{"component": "embedder", "reason": "error"}]
    assert {s["retriever"] for s in body["sources"]} == {"bm25"}
    assert weaviate.search_calls == before
    assert body["sources"][0]["source"] == "volcanoes.html"


async def test_vector_db_and_llm_down_together(stack):
    client, weaviate, anthropic = stack
    weaviate.set_faults(status=503)
    anthropic.set_faults(status=529)
    resp = await client.post("/v1/query", json={"query": "how does a circuit breaker half-open"})
    body = await resp.json()
    assert resp.status == 200
    assert body["mode"] == "extractive" and body["degraded"] is True
    assert [d["component"] for d in body["degradations"]] == ["vector_db", "llm", "llm_fallback"]
    assert body["sources"][0]["retriever"] == "bm25" and body["sources"][0]["source"] == "breakers.md"


async def test_near_text_when_weaviate_vectorizes(tmp_path, gateway_factory, fake_weaviate):
    settings = make_settings(tmp_path / "data", **weaviate_overrides(
        fake_weaviate, **{"vector_store.weaviate.use_near_text": True, "embedder.backend": "none"}))
    await ingest_into(settings)
    client = await gateway_factory(settings)
    body = await (await client.post("/v1/retrieve", json={"query": "Mount Fuji stratovolcano"})).json()
    assert body["mode"] == "full" and body["sources"][0]["retriever"] == "hybrid"
    assert body["sources"][0]["source"] == "volcanoes.html"


async def test_hybrid_off_queries_weaviate_by_vector_only(tmp_path, gateway_factory, fake_weaviate, fake_embeddings):
    settings = make_settings(tmp_path / "data", **weaviate_overrides(
        fake_weaviate, **{"embedder.backend": "openai", "embedder.url": fake_embeddings.url + "/v1",
                          "retrieval.hybrid": False}))
    await ingest_into(settings)
    client = await gateway_factory(settings)
    body = await (await client.post("/v1/retrieve", json={"query": "green tea steeping time"})).json()
    assert body["degraded"] is False and {s["retriever"] for s in body["sources"]} == {"vector"}
    assert (await (await client.get("/health")).json())["retrieval"] == "vector"
