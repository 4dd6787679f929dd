"""The gateway on embedded defaults: the response contract, bad input, readiness, persistence."""
from __future__ import annotations

import json

import pytest

from gateway.kb import KnowledgeBase
from tests.conftest import ingest_octopus_version, make_settings, state_of


async def test_query_answers_from_the_kb_with_the_contract(gateway):
    resp = await gateway.post("/v1/query", json={"query": "What temperature should water be for green tea?"})
    assert resp.status == 200
    body = await resp.json()
    assert body["mode"] == "extractive" and body["degraded"] is False and body["degradations"] == []
    assert body["sources"][0]["source"] == "tea.md"
    assert body["sources"][0]["retriever"] == "hybrid"
    assert "70" in body["answer"] and "[1]" in body["answer"]
    assert body["kb_version"] == state_of(gateway).kb.version
    assert set(body["timings_ms"]) >= {"retrieve", "total"}
    assert resp.headers["X-RAG-Mode"] == "extractive"
    assert resp.headers["X-RAG-Degraded"] == "false"
    assert resp.headers["X-Request-Id"] == body["request_id"]
    assert "total;dur=" in resp.headers["Server-Timing"]


async def test_request_id_is_propagated_from_the_client(gateway):
    resp = await gateway.post("/v1/query", json={"query": "volcano"}, headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    assert (await resp.json())["request_id"] == "abc-123"


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "é"])
async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_minted_one(gateway, sent):
    resp = await gateway.get("/livez", headers={} if sent is None else {"X-Request-Id": sent})
    minted = resp.headers["X-Request-Id"]
    assert minted != sent and len(minted) == 32 and int(minted, 16) >= 0


async def test_retrieve_returns_chunks_with_text(gateway):
    resp = await gateway.post("/v1/retrieve", json={"query": "half-open trial calls", "top_k": 2})
    body = await resp.json()
    assert resp.status == 200 and body["mode"] == "full" and body["answer"] is None
    assert len(body["chunks"]) == 2
    assert body["chunks"][0]["source"] == "breakers.md" and "trial" in body["chunks"][0]["text"]


async def test_filters_restrict_sources(gateway):
    resp = await gateway.post("/v1/retrieve", json={"query": "green tea temperature", "top_k": 5,
                                                     "filters": {"source": "volcanoes.html"}})
    body = await resp.json()
    assert body["sources"] and {s["source"] for s in body["sources"]} == {"volcanoes.html"}


async def test_html_is_ingested_as_text(gateway):
    body = await (await gateway.post("/v1/retrieve", json={"query": "Mauna Loa shield volcano"})).json()
    top = body["chunks"][0]
    assert top["source"] == "volcanoes.html" and "basaltic" in top["text"]
    assert "var x" not in top["text"] and "color:red" not in top["text"]


async def test_stream_sends_deltas_then_the_contract(gateway):
    resp = await gateway.post("/v1/query", json={"query": "How long should green tea steep?", "stream": True})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in (await resp.text()).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and "delta" in kinds
    text = "".join(d["text"] for k, d in events if k == "delta")
    done = events[-1][1]
    assert done["answer"] == text and done["mode"] == "extractive" and done["sources"]


BAD_INPUT = [
    ({"json": {"query": ""}}, 422, "query"),
    ({"json": {"query": "   "}}, 422, "query"),
    ({"json": {"query": "x" * 5000}}, 413, "query"),
    ({"json": {"query": "tea", "top_k": 0}}, 422, "top_k"),
    ({"json": {"query": "tea", "top_k": 1000}}, 422, "top_k"),
    ({"json": {"query": "tea", "top_k": "5"}}, 422, "top_k"),
    ({"json": {"query": 42}}, 422, "query"),
    ({"json": {"query": "tea", "stream": "yes"}}, 422, "stream"),
    ({"json": {"query": "tea", "colour": "red"}}, 422, "colour"),
    ({"json": {"top_k": 3}}, 422, "query"),
    ({"json": ["tea"]}, 422, None),
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, None),
    ({"data": b"", "headers": {"Content-Type": "application/json"}}, 400, None),
    ({"data": b"<q>tea</q>", "headers": {"Content-Type": "application/xml"}}, 415, "Content-Type"),
    ({"data": b'{"query": "' + b"a" * 70000 + b'"}', "headers": {"Content-Type": "application/json"}}, 413, None),
    ({"data": b'{"query": "\\ud800 tea"}', "headers": {"Content-Type": "application/json"}}, 422, "query"),
    ({"json": {"query": "tea", "filters": {"": "x"}}}, 422, "filters"),
    ({"json": {"query": "tea", "filters": {"source": {"nested": 1}}}}, 422, "filters.source"),
    ({"data": b'{"query": "tea", "filters": {"n": NaN}}', "headers": {"Content-Type": "application/json"}}, 422,
     "filters.n"),
    ({"json": {"query": "tea"}, "headers": {"X-Request-Timeout": "soon"}}, 400, "X-Request-Timeout"),
    ({"json": {"query": "tea"}, "headers": {"X-Request-Timeout": "9999"}}, 400, "X-Request-Timeout"),
]


@pytest.mark.parametrize("kwargs,status,field", BAD_INPUT)
@pytest.mark.parametrize("path", ["/v1/query", "/v1/retrieve"])
async def test_bad_input_gets_a_json_4xx_naming_the_field(gateway, path, kwargs, status, field):
    resp = await gateway.post(path, **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert set(body["error"]) >= {"type", "message", "field"}
    assert body["error"]["field"] == field
    assert "Traceback" not in json.dumps(body)


async def test_unknown_route_and_method_are_json(gateway):
    resp = await gateway.get("/v1/nope")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found"
    resp = await gateway.get("/v1/query")
    assert resp.status == 405 and (await resp.json())["error"]["type"] == "method_not_allowed"


async def test_the_readmes_curl_form_works(gateway):
    # The README's examples: `curl -H 'Content-Type: application/json' -d '{...}'` (a bare `curl -d` sends a
    # form type, refused with 415 like any type a browser may send cross-origin without a preflight).
    resp = await gateway.post("/v1/query", data=b'{"query": "steeping time"}',
                              headers={"Content-Type": "application/json"})
    assert resp.status == 200


async def test_health_reports_components(gateway):
    body = await (await gateway.get("/health")).json()
    assert body["status"] == "ok"
    comps = body["components"]
    assert comps["kb"]["version"] == state_of(gateway).kb.version and comps["kb"]["chunks"] > 0
    assert comps["keyword_index"]["status"] == "ok"
    assert comps["vector_db"]["guard"]["name"] == "vector_db"


async def test_readyz_is_503_until_a_kb_is_activated(gateway_factory, tmp_path, ingested_kb):
    settings = make_settings(tmp_path / "empty", **{"kb.auto_ingest_sample": False,
                                                     "auth.admin_token": "adm1n-token"})
    client = await gateway_factory(settings, wait_ready=False)
    resp = await client.get("/readyz")
    assert resp.status == 503 and resp.headers["Retry-After"]
    resp = await client.post("/v1/query", json={"query": "tea"})
    assert resp.status == 503 and (await resp.json())["error"]["type"] == "not_ready"
    # An operator ingests a version; the admin API activates it without a restart.
    import shutil
    shutil.copytree(ingested_kb / "kb" / "versions", tmp_path / "empty" / "kb" / "versions", dirs_exist_ok=True)
    version = KnowledgeBase(tmp_path / "empty" / "kb").list_versions()[0]["version"]
    resp = await client.post("/admin/kb/activate", json={"version": version},
                             headers={"Authorization": "Bearer adm1n-token"})
    assert resp.status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/v1/query", json={"query": "tea"})).status == 200


async def test_restart_keeps_the_kb(gateway_factory, data_dir):
    first = await gateway_factory(make_settings(data_dir))
    version = state_of(first).kb.version
    await first.close()
    second = await gateway_factory(make_settings(data_dir, **{"kb.auto_ingest_sample": False}))
    assert state_of(second).kb.version == version
    body = await (await second.post("/v1/query", json={"query": "stratovolcano Mount Fuji"})).json()
    assert body["sources"][0]["source"] == "volcanoes.html"


async def test_half_built_version_left_by_a_crash_is_ignored_and_removed(gateway_factory, data_dir):
    kb = KnowledgeBase(data_dir / "kb")
    active = kb.active_version()
    leftover = data_dir / "kb" / ".tmp-v-crashed"
    (leftover / "keyword").mkdir(parents=True)
    (leftover / "chunks.jsonl").write_text('{"id": "half')
    client = await gateway_factory(make_settings(data_dir))
    assert state_of(client).kb.version == active
    assert not leftover.exists()


async def test_kb_activate_and_rollback_swap_versions_live(gateway_factory, data_dir, tmp_path):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "t0ken-admin"}))
    old = state_of(client).kb.version
    new = await ingest_octopus_version(data_dir, tmp_path)
    headers = {"Authorization": "Bearer t0ken-admin"}
    assert (await client.post("/admin/kb/activate", json={"version": new}, headers=headers)).status == 200
    body = await (await client.post("/v1/query", json={"query": "how many hearts does an octopus have"})).json()
    assert body["kb_version"] == new and body["sources"][0]["source"] == "octopus.md"
    assert (await client.post("/admin/kb/rollback", headers=headers)).status == 200
    body = await (await client.post("/v1/query", json={"query": "how many hearts does an octopus have"})).json()
    assert body["kb_version"] == old
    assert all(s["source"] != "octopus.md" for s in body["sources"])
    # Unchanged chunks were not re-embedded.
    manifest = next(v for v in KnowledgeBase(data_dir / "kb").list_versions() if v["version"] == new)
    assert manifest["reused_vectors"] > 0


async def test_admin_requires_the_token(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "s3cret-admin"}))
    assert (await client.get("/admin/breakers")).status == 401
    assert (await client.get("/admin/breakers", headers={"Authorization": "Bearer wrong"})).status == 401
    resp = await client.get("/admin/breakers", headers={"Authorization": "Bearer s3cret-admin"})
    assert resp.status == 200 and "vector_db" in await resp.json()


async def test_admin_is_disabled_without_a_token(gateway):
    assert (await gateway.get("/admin/breakers")).status == 404


async def test_api_keys_protect_v1_but_not_probes(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.api_keys": ["key-one-1234"]}))
    assert (await client.post("/v1/query", json={"query": "tea"})).status == 401
    ok = await client.post("/v1/query", json={"query": "tea"}, headers={"Authorization": "Bearer key-one-1234"})
    assert ok.status == 200
    ok = await client.post("/v1/query", json={"query": "tea"}, headers={"x-api-key": "key-one-1234"})
    assert ok.status == 200
    assert (await client.get("/livez")).status == 200


async def test_a_body_that_arrives_in_pieces_is_read_whole(gateway):
    import asyncio

    body = b'{"query": "how long should green tea steep", "top_k": 2}'
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body[:20])
    await writer.drain()
    await asyncio.sleep(0.2)  # a slow client: the second half really is a separate packet
    writer.write(body[20:])
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


async def test_first_start_on_the_sample_corpus_uses_the_shipped_vectors(gateway_factory, tmp_path):
    """The README's promise: first `make serve` is ready at once and answers its example question."""
    from gateway.config import REPO_ROOT

    settings = make_settings(tmp_path / "fresh", **{"kb.sample_corpus": str(REPO_ROOT / "corpus" / "python-stdlib")})
    client = await gateway_factory(settings)
    manifest = state_of(client).kb.manifest
    # Every vector came from corpus/embeddings.local.npz: a stale seed file would make this (and the first
    # start) slow — run `make sample-embeddings` after changing the corpus or the chunking.
    assert manifest["reused_vectors"] == manifest["chunk_count"] > 100
    resp = await client.post("/v1/query", json={
        "query": "How do I create a temporary directory that is removed automatically?"})
    body = await resp.json()
    assert body["mode"] == "extractive" and body["degraded"] is False
    assert body["sources"][0]["source"] == "python-stdlib/tempfile.md"
    assert "temporary directory" in body["answer"]
