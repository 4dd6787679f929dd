"""The retrieval side of the ladder and the local fallbacks failing: index missing, cache corrupted,
everything down → 503 + Retry-After. Faults come from the stand-ins or from damaging files on disk."""
from __future__ import annotations

import shutil

import pytest

from gateway.kb import KnowledgeBase
from tests.conftest import anthropic_overrides, ingest_into, make_settings, state_of, weaviate_overrides


@pytest.fixture
async def weaviate_stack(tmp_path, gateway_factory, fake_weaviate, fake_embeddings):
    overrides = {**weaviate_overrides(fake_weaviate), "embedder.backend": "openai",
                 "embedder.url": fake_embeddings.url + "/v1", "resilience.vector_db.timeout_s": 0.3}
    settings = make_settings(tmp_path / "data", **overrides)
    await ingest_into(settings)
    return settings, fake_weaviate


async def test_keyword_index_missing_and_vector_db_down_is_503_with_retry_after(weaviate_stack, gateway_factory):
    settings, weaviate = weaviate_stack
    kb = KnowledgeBase(settings.server.data_dir / "kb")
    shutil.rmtree(kb.versions_dir / kb.active_version() / "keyword")
    client = await gateway_factory(settings)
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and "keyword_index:unavailable" in health["degraded_components"]
    # Vector DB healthy: the missing index costs nothing yet.
    ok = await client.post("/v1/query", json={"query": "green tea"})
    assert ok.status == 200 and (await ok.json())["mode"] == "extractive"
    weaviate.set_faults(status=503)
    resp = await client.post("/v1/query", json={"query": "green tea"})
    body = await resp.json()
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert body["mode"] == "unavailable" and body["degraded"] is True
    assert [d["component"] for d in body["degradations"]] == ["vector_db", "keyword_index"]
    assert body["degradations"][1]["reason"] == "missing"
    assert resp.headers["X-RAG-Mode"] == "unavailable"


async def test_corrupt_keyword_index_is_labelled_not_fatal(weaviate_stack, gateway_factory):
    settings, weaviate = weaviate_stack
    kb = KnowledgeBase(settings.server.data_dir / "kb")
    for f in (kb.versions_dir / kb.active_version() / "keyword").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    client = await gateway_factory(settings)
    assert (await client.get("/readyz")).status == 200
    health = await (await client.get("/health")).json()
    assert health["components"]["keyword_index"]["status"] == "unavailable"
    assert health["components"]["keyword_index"]["error"]
    weaviate.set_faults(status=503)
    resp = await client.post("/v1/query", json={"query": "green tea"})
    body = await resp.json()
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert [(d["component"], d["reason"]) for d in body["degradations"]] == [
        ("vector_db", "error"), ("keyword_index", "missing")]


async def test_stream_everything_down_is_a_plain_503(weaviate_stack, gateway_factory):
    settings, weaviate = weaviate_stack
    kb = KnowledgeBase(settings.server.data_dir / "kb")
    shutil.rmtree(kb.versions_dir / kb.active_version() / "keyword")
    client = await gateway_factory(settings)
    weaviate.set_faults(hang=True)
    resp = await client.post("/v1/query", json={"query": "tea", "stream": True})
    assert resp.status == 503 and resp.headers["Retry-After"]


async def test_corrupted_answer_cache_degrades_to_no_cache(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    first = await (await client.post("/v1/query", json={"query": "green tea"})).json()
    assert first["mode"] == "full"
    cache = state_of(client).cache
    db = cache.dir / "cache.db"
    cache.close()
    db.write_bytes(b"this is not sqlite" * 100)
    resp = await client.post("/v1/query", json={"query": "green tea"})
    body = await resp.json()
    assert resp.status == 200 and body["mode"] == "full" and body["answer"] == first["answer"]
    assert body["degraded"] is False and {s["retriever"] for s in body["sources"]} == {"hybrid"}
    health = await (await client.get("/health")).json()
    assert health["components"]["answer_cache"]["healthy"] is False
    assert health["components"]["answer_cache"]["errors"] >= 1
    assert "answer_cache:unhealthy" in health["degraded_components"]


async def test_unwritable_cache_dir_at_start_is_no_cache_not_a_crash(gateway_factory, data_dir, fake_anthropic):
    (data_dir / "cache").write_text("a file where the cache dir should be")
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    resp = await client.post("/v1/query", json={"query": "green tea"})
    assert resp.status == 200 and (await resp.json())["mode"] == "full"
    health = await (await client.get("/health")).json()
    assert health["components"]["answer_cache"]["healthy"] is False


async def test_empty_retrieval_says_so_instead_of_inventing(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    calls = sum(fake_anthropic.model_counts.values())
    resp = await client.post("/v1/query", json={"query": "green tea", "filters": {"source": "nothing-here.md"}})
    body = await resp.json()
    assert resp.status == 200 and body["sources"] == []
    assert "could not find relevant information" in body["answer"]
    assert sum(fake_anthropic.model_counts.values()) == calls  # no LLM call without context


async def test_stale_keyword_index_synced_from_weaviate_is_labelled(weaviate_stack, gateway_factory, tmp_path):
    settings, weaviate = weaviate_stack
    # Mirror the collection into a keyword index (as for a collection we did not ingest)…
    from gateway.upstreams.weaviate import WeaviateStore

    store = WeaviateStore(settings.vector_store)
    await store.connect()
    try:
        kb = KnowledgeBase(settings.server.data_dir / "kb")
        version = await kb.sync_from(store)
    finally:
        await store.close()
    manifest = next(v for v in kb.list_versions() if v["version"] == version)
    assert manifest["synced_from"] == "weaviate" and manifest["chunk_count"] == 3
    # …and treat anything older than 1 ms as stale.
    settings.kb.stale_after_s = 0.001
    client = await gateway_factory(settings)
    weaviate.set_faults(status=503)
    body = await (await client.post("/v1/query", json={"query": "volcano lava"})).json()
    assert body["mode"] == "extractive"
    assert {"component": "keyword_index", "reason": "stale"}.items() <= body["degradations"][1].items()
    assert body["sources"][0]["retriever"] == "bm25"
