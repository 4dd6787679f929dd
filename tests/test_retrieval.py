"""Retrieval modes of a KB version: keyword-only KBs serve, vectors of another model are refused."""
from __future__ import annotations

import json

from gateway.kb import KnowledgeBase
from tests.conftest import make_settings, state_of

ADMIN = {"Authorization": "Bearer adm-token-1234"}


async def test_keyword_only_kb_on_the_embedded_store_serves_bm25_undegraded(gateway_factory, tmp_path):
    # embedder.backend none + embedded store: the first start ingests without vectors and must become ready.
    client = await gateway_factory(make_settings(tmp_path / "data", **{"embedder.backend": "none"}))
    kb = state_of(client).kb
    assert not (kb.path / "vectors.npy").exists() and kb.manifest["embedder"] is None
    resp = await client.post("/v1/query", json={"query": "stratovolcano Mount Fuji"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["mode"] == "extractive" and body["degraded"] is False and body["degradations"] == []
    assert resp.headers["X-RAG-Degraded"] == "false"
    assert body["sources"][0]["source"].endswith("volcanoes.html")
    assert {s["retriever"] for s in body["sources"]} == {"bm25"}
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["retrieval"] == "keyword_only"


async def test_a_keyword_only_kb_without_its_index_is_unavailable_not_silently_empty(gateway_factory, tmp_path):
    import shutil

    client = await gateway_factory(make_settings(tmp_path / "data", **{"embedder.backend": "none"}))
    state_of(client).kb.keyword_index = None
    shutil.rmtree(state_of(client).kb.path / "keyword")
    resp = await client.post("/v1/query", json={"query": "stratovolcano"})
    assert resp.status == 503
    assert {"component": "keyword_index", "reason": "missing"} in (await resp.json())["degradations"]


def _relabel(kb: KnowledgeBase, version: str, model: str | None) -> str:
    """A copy of ``version`` whose manifest says another model made its vectors."""
    import shutil

    dst = kb.versions_dir / f"{version}-by-{(model or 'none').replace(':', '-')}"
    shutil.copytree(kb.versions_dir / version, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["embedder"] = None if model is None else {"name": model, "dim": 384}
    manifest["version"] = dst.name
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst.name


async def test_a_version_embedded_by_another_model_is_refused_and_the_old_one_keeps_serving(
        gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "adm-token-1234"}))
    kb = state_of(client).kb_store
    before = kb.active_version()
    for model in ("openai:text-embedding-3-small", None):
        other = _relabel(kb, before, model)
        resp = await client.post("/admin/kb/activate", json={"version": other}, headers=ADMIN)
        body = await resp.json()
        assert resp.status == 409, body
        assert body["error"]["field"] == "version" and "re-ingest" in body["error"]["message"]
        assert kb.active_version() == before and state_of(client).kb.version == before
    body = await (await client.post("/v1/query", json={"query": "stratovolcano"})).json()
    assert body["mode"] == "extractive" and not body["degraded"]


async def test_start_up_on_another_models_vectors_stays_not_ready_with_the_reason(gateway_factory, data_dir):
    kb = KnowledgeBase(data_dir / "kb")
    kb.activate(_relabel(kb, kb.active_version(), "openai:text-embedding-3-small"))
    client = await gateway_factory(make_settings(data_dir, **{"kb.auto_ingest_sample": False}), wait_ready=False)
    await state_of(client).settled.wait()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "openai:text-embedding-3-small" in (await resp.json())["error"]


async def test_normal_path_is_hybrid_and_a_failing_keyword_half_is_labelled(gateway):
    body = await (await gateway.post("/v1/query", json={"query": "stratovolcano Mount Fuji"})).json()
    assert body["degraded"] is False and {s["retriever"] for s in body["sources"]} == {"hybrid"}
    assert body["sources"][0]["source"].endswith("volcanoes.html")
    assert (await (await gateway.get("/health")).json())["retrieval"] == "hybrid"

    class Broken:
        def search(self, *args, **kwargs):
            raise OSError("index file vanished")

    state_of(gateway).kb.keyword_index = Broken()
    body = await (await gateway.post("/v1/query", json={"query": "stratovolcano Mount Fuji"})).json()
    assert body["degraded"] is True and {s["retriever"] for s in body["sources"]} == {"vector"}
    assert body["degradations"] == [{"component": "keyword_index", "reason": "error", "detail": "OSError"}]
    assert body["sources"][0]["source"].endswith("volcanoes.html")


async def test_hybrid_off_is_vector_only(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"retrieval.hybrid": False}))
    body = await (await client.post("/v1/query", json={"query": "stratovolcano Mount Fuji", "top_k": 2})).json()
    assert {s["retriever"] for s in body["sources"]} == {"vector"} and len(body["sources"]) == 2
