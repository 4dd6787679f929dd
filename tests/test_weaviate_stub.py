"""The fake Weaviate, driven by the real weaviate-client 4.23.1 over sockets, and WeaviateStore on top.

Each test arranges a fresh fake (REST + gRPC on ephemeral loopback ports), acts through the real
client or through ``WeaviateStore``, and asserts on results, typed errors and the fake's counters.
"""
from __future__ import annotations

import asyncio
import time
import uuid as uuid_lib
from typing import Any, AsyncIterator

import aiohttp
import numpy as np
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import WeaviateQueryError

from chaos.stubs.weaviate import FakeWeaviate, hashing_vectorizer
from fallback.documents import Chunk
from gateway.config import VectorStoreConfig, WeaviateConfig
from gateway.upstreams.weaviate import WeaviateStore
from resilience.errors import UpstreamError

pytestmark = pytest.mark.timeout(20)

DIM = 8


def unit(*values: float) -> list[float]:
    vec = np.zeros(DIM, dtype=np.float32)
    vec[: len(values)] = values
    return (vec / np.linalg.norm(vec)).tolist()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeaviate]:
    server = FakeWeaviate(vectorizer=hashing_vectorizer(32), seed=1)
    await server.start()
    yield server
    await server.stop()


def async_client(fake: FakeWeaviate, *, query_timeout_s: float = 5.0) -> weaviate.WeaviateAsyncClient:
    # skip_init_checks: the init checks also GET pypi.org; liveness is asserted explicitly instead.
    return weaviate.use_async_with_custom(
        http_host="127.0.0.1", http_port=fake.http_port, http_secure=False,
        grpc_host="127.0.0.1", grpc_port=fake.grpc_port, grpc_secure=False, skip_init_checks=True,
        additional_config=AdditionalConfig(timeout=Timeout(init=2, query=query_timeout_s, insert=5)))


@pytest.fixture
async def client(fake: FakeWeaviate) -> AsyncIterator[weaviate.WeaviateAsyncClient]:
    c = async_client(fake)
    await c.connect()
    yield c
    await c.close()


def store_config(fake: FakeWeaviate, **weaviate_overrides: Any) -> VectorStoreConfig:
    return VectorStoreConfig(backend="weaviate", timeout_s=weaviate_overrides.pop("timeout_s", 2.0),
                             weaviate=WeaviateConfig(http_port=fake.http_port, grpc_port=fake.grpc_port,
                                                     collection="Kb", **weaviate_overrides))


@pytest.fixture
async def store(fake: FakeWeaviate) -> AsyncIterator[WeaviateStore]:
    s = WeaviateStore(store_config(fake))
    await s.connect()
    await s.ensure_collection()
    yield s
    await s.close()


CHUNKS = [
    Chunk(id="c-cats", text="Cats purr and sleep all day.", title="Cats", source="pets.md", doc_id="d1", position=0),
    Chunk(id="c-dogs", text="Dogs bark at the mail carrier.", title="Dogs", source="pets.md", doc_id="d1", position=1),
    Chunk(id="c-tax", text="File your tax return by April.", title="Tax", source="money.md", doc_id="d2", position=0),
]
VECTORS = np.array([unit(1, 0), unit(0.8, 0.6), unit(0, 1)], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The real async client against the fake


async def seed_docs(client: weaviate.WeaviateAsyncClient) -> Any:
    docs = await client.collections.create(
        "Docs", properties=[Property(name="text", data_type=DataType.TEXT),
                            Property(name="lang", data_type=DataType.TEXT),
                            Property(name="tags", data_type=DataType.TEXT_ARRAY)],
        vector_config=Configure.Vectors.self_provided())
    result = await docs.data.insert_many([
        DataObject(properties={"text": "alpha apples", "lang": "en", "tags": ["fruit"]}, vector=unit(1, 0, 0)),
        DataObject(properties={"text": "beta bananas apples", "lang": "en", "tags": ["fruit", "yellow"]},
                   vector=unit(1, 1, 0)),
        DataObject(properties={"text": "gamma garage", "lang": "de", "tags": ["car"]}, vector=unit(0, 0, 1)),
    ])
    assert not result.has_errors
    return docs


async def test_connect_schema_roundtrip(client: weaviate.WeaviateAsyncClient, fake: FakeWeaviate) -> None:
    assert await client.is_live()  # REST live + the gRPC health ping
    assert await client.is_ready()
    assert not await client.collections.exists("Docs")
    docs = await seed_docs(client)

    assert await client.collections.exists("docs")  # first letter is capitalised, as on a real server
    config = await docs.config.get()
    assert config.name == "Docs"
    assert [p.name for p in config.properties] == ["text", "lang", "tags"]
    assert config.vector_config is not None and "default" in config.vector_config
    assert list(await client.collections.list_all()) == ["Docs"]

    await client.collections.delete("Docs")
    assert not await client.collections.exists("Docs")


async def test_near_vector_ranks_nearest_first(client: weaviate.WeaviateAsyncClient) -> None:
    docs = await seed_docs(client)
    result = await docs.query.near_vector(unit(1, 0.1, 0), limit=3,
                                          return_metadata=MetadataQuery(distance=True, certainty=True))
    assert [o.properties["text"] for o in result.objects] == ["alpha apples", "beta bananas apples", "gamma garage"]
    distances = [o.metadata.distance for o in result.objects]
    assert distances == sorted(distances) and distances[0] == pytest.approx(1 - 1 / np.sqrt(1.01), abs=1e-5)
    assert result.objects[2].metadata.distance == pytest.approx(1.0, abs=1e-6)  # orthogonal
    assert result.objects[0].metadata.certainty == pytest.approx(1 - distances[0] / 2, abs=1e-6)

    limited = await docs.query.near_vector(unit(0, 0, 1), limit=1, return_properties=["lang"])
    assert [o.properties for o in limited.objects] == [{"lang": "de"}]


async def test_filters_equal_contains_any_and_or(client: weaviate.WeaviateAsyncClient) -> None:
    docs = await seed_docs(client)

    async def texts(where: Any) -> set[str]:
        return {o.properties["text"] for o in (await docs.query.fetch_objects(filters=where)).objects}

    assert await texts(Filter.by_property("lang").equal("de")) == {"gamma garage"}
    assert await texts(Filter.by_property("tags").contains_any(["yellow", "car"])) == {
        "beta bananas apples", "gamma garage"}
    assert await texts(Filter.by_property("lang").equal("en") & Filter.by_property("tags").equal("yellow")) == {
        "beta bananas apples"}
    assert await texts(Filter.by_property("lang").equal("de") | Filter.by_property("tags").equal("yellow")) == {
        "beta bananas apples", "gamma garage"}
    near = await docs.query.near_vector(unit(1, 0, 0), filters=Filter.by_property("lang").equal("de"))
    assert [o.properties["text"] for o in near.objects] == ["gamma garage"]


async def test_bm25_and_hybrid(client: weaviate.WeaviateAsyncClient) -> None:
    docs = await seed_docs(client)
    bm25 = await docs.query.bm25("apples bananas", return_metadata=MetadataQuery(score=True))
    assert [o.properties["text"] for o in bm25.objects] == ["beta bananas apples", "alpha apples"]
    assert bm25.objects[0].metadata.score > bm25.objects[1].metadata.score > 0

    # alpha=1 is pure vector, alpha=0 pure keyword: the blend must follow the weight.
    by_vector = await docs.query.hybrid("garage", vector=unit(1, 0, 0), alpha=1.0, limit=1)
    by_keyword = await docs.query.hybrid("garage", vector=unit(1, 0, 0), alpha=0.0, limit=1)
    assert by_vector.objects[0].properties["text"] == "alpha apples"
    assert by_keyword.objects[0].properties["text"] == "gamma garage"


async def test_near_text_uses_the_pluggable_vectorizer(client: weaviate.WeaviateAsyncClient) -> None:
    notes = await client.collections.create(
        "Notes", properties=[Property(name="text", data_type=DataType.TEXT)],
        vector_config=Configure.Vectors.text2vec_transformers())
    texts = ["the cat sat on the mat", "stock markets fell sharply today", "rain expected over the weekend"]
    assert not (await notes.data.insert_many([{"text": t} for t in texts])).has_errors  # server vectorizes

    result = await notes.query.near_text("markets and stock prices", limit=3, return_metadata=MetadataQuery(distance=True))
    assert result.objects[0].properties["text"] == "stock markets fell sharply today"
    assert result.objects[0].metadata.distance < result.objects[1].metadata.distance


async def test_near_text_without_vectorizer_errors_like_weaviate(client: weaviate.WeaviateAsyncClient) -> None:
    docs = await seed_docs(client)  # self_provided vectors: no vectorizer module
    with pytest.raises(WeaviateQueryError, match="vectorizer"):
        await docs.query.near_text("apples")


async def test_iterator_pages_with_after_cursor(client: weaviate.WeaviateAsyncClient, fake: FakeWeaviate) -> None:
    docs = await client.collections.create("Many", vector_config=Configure.Vectors.self_provided())
    rng = np.random.default_rng(0)
    objects = [DataObject(properties={"n": i}, vector=rng.normal(size=DIM).tolist()) for i in range(250)]
    assert not (await docs.data.insert_many(objects)).has_errors
    before = fake.search_calls

    seen = [o async for o in docs.iterator()]  # the client's default page is 100 objects

    assert sorted(int(o.properties["n"]) for o in seen) == list(range(250))
    assert [o.uuid for o in seen] == sorted(o.uuid for o in seen)  # cursor order
    assert fake.search_calls - before == 4  # 100 + 100 + 50 + the empty page that ends it
    assert (await docs.aggregate.over_all(total_count=True)).total_count == 250


async def test_batch_upserts_by_uuid(client: weaviate.WeaviateAsyncClient, fake: FakeWeaviate) -> None:
    docs = await seed_docs(client)
    uid = uuid_lib.uuid4()
    await docs.data.insert_many([DataObject(properties={"text": "v1"}, uuid=uid, vector=unit(1))])
    await docs.data.insert_many([DataObject(properties={"text": "v2"}, uuid=uid, vector=unit(1))])
    assert fake.stats()["objects"]["Docs"] == 4
    got = await docs.query.fetch_objects(filters=Filter.by_id().equal(uid))
    assert [o.properties["text"] for o in got.objects] == ["v2"]

    mixed = await docs.data.insert_many([DataObject(properties={"text": "ok"}, vector=unit(0, 1)),
                                         DataObject(properties={"text": "short"}, vector=[1.0, 0.0])])
    assert list(mixed.errors) == [1] and "vector with length 2" in mixed.errors[1].message
    assert fake.stats()["objects"]["Docs"] == 5


# The sync client blocks its thread, so it must not share the fake's event loop.
async def test_sync_client_smoke(fake: FakeWeaviate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", "http://127.0.0.1:9/")
    fake.add_collection("Sync", ["text"])
    fake.insert("Sync", uuid_lib.uuid4(), {"text": "near"}, unit(1, 0))
    fake.insert("Sync", uuid_lib.uuid4(), {"text": "far"}, unit(0, 1))

    def use_sync_client() -> tuple[list[str], int]:
        with weaviate.connect_to_custom(  # connect() runs the full init checks incl. the gRPC ping
                http_host="127.0.0.1", http_port=fake.http_port, http_secure=False,
                grpc_host="127.0.0.1", grpc_port=fake.grpc_port, grpc_secure=False) as sync:
            coll = sync.collections.use("Sync")
            texts = [o.properties["text"] for o in coll.query.near_vector(unit(1, 0.1), limit=2).objects]
            return texts, int(coll.aggregate.over_all(total_count=True).total_count or 0)

    texts, total = await asyncio.to_thread(use_sync_client)
    assert texts == ["near", "far"] and total == 2


# ---------------------------------------------------------------------------------------------
# WeaviateStore


async def test_store_upsert_search_count_iterate(store: WeaviateStore, fake: FakeWeaviate) -> None:
    await store.upsert(CHUNKS, VECTORS)
    await store.upsert(CHUNKS, VECTORS)  # deterministic uuids: re-ingest overwrites

    assert await store.count() == 3
    hits = await store.search(np.array(unit(1, 0.1)), top_k=2)
    assert [h.id for h in hits] == ["c-cats", "c-dogs"]
    assert hits[0].retriever == "vector" and hits[0].score > hits[1].score
    assert hits[0].score == pytest.approx(float(np.dot(unit(1, 0.1), VECTORS[0])), abs=1e-5)
    assert (hits[0].title, hits[0].source, hits[0].doc_id, hits[0].position) == ("Cats", "pets.md", "d1", 0)

    by_source = await store.search(np.array(unit(1, 0)), top_k=5, filters={"source": "money.md"})
    assert [h.id for h in by_source] == ["c-tax"]
    by_docs = await store.search(np.array(unit(0, 1)), top_k=5, filters={"doc_id": ["d1"], "position": 1})
    assert [h.id for h in by_docs] == ["c-dogs"]

    assert sorted(c.id for c in [c async for c in store.iterate()]) == ["c-cats", "c-dogs", "c-tax"]


async def test_store_iterates_past_one_cursor_page(store: WeaviateStore, fake: FakeWeaviate) -> None:
    from gateway.upstreams.weaviate import ITERATOR_PAGE

    n = ITERATOR_PAGE + 20
    chunks = [Chunk(id=f"c{i}", text=f"text {i}") for i in range(n)]
    vectors = np.random.default_rng(1).normal(size=(n, DIM)).astype(np.float32)
    await store.upsert(chunks, vectors)
    before = fake.search_calls
    ids = [c.id async for c in store.iterate()]
    assert sorted(ids) == sorted(c.id for c in chunks)
    assert fake.search_calls - before == 3  # two pages and the empty one


async def test_store_upsert_rejects_wrong_dimension(store: WeaviateStore) -> None:
    await store.upsert(CHUNKS[:1], VECTORS[:1])
    with pytest.raises(UpstreamError) as err:
        await store.upsert(CHUNKS[1:2], np.ones((1, 3), dtype=np.float32))
    assert err.value.status == 422 and err.value.caller_fault and not err.value.retryable


async def test_store_near_text_mode(fake: FakeWeaviate) -> None:
    s = WeaviateStore(store_config(fake, use_near_text=True))
    await s.connect()
    try:
        await s.ensure_collection(vectorizer=True)
        await s.upsert(CHUNKS, None)  # the (fake) server vectorizes
        hits = await s.search(None, top_k=1, query_text="when is the tax return due")
        assert [h.id for h in hits] == ["c-tax"]
    finally:
        await s.close()


async def test_store_sends_api_key() -> None:
    fake = FakeWeaviate(api_key="s3cret")
    await fake.start()
    try:
        good = WeaviateStore(store_config(fake, api_key="s3cret"))
        await good.connect()
        await good.ensure_collection()
        assert await good.count() == 0
        await good.close()

        bad = WeaviateStore(store_config(fake, api_key="wrong"))
        with pytest.raises(UpstreamError) as err:
            await bad.connect()
        assert err.value.status == 401 and not err.value.retryable
    finally:
        await fake.stop()


# ---------------------------------------------------------------------------------------------
# Faults


async def test_503_surfaces_at_once_instead_of_client_retry_storm(store: WeaviateStore, fake: FakeWeaviate) -> None:
    assert store.client_retries_disabled
    fake.set_faults(status=503, retry_after_s=3)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        async with asyncio.timeout(2.0):
            await store.search(np.array(unit(1)), top_k=3)
    assert time.monotonic() - started < 1.0  # the client's own retry would sleep 1 s first
    assert (err.value.status, err.value.retryable, err.value.retry_after_s) == (503, True, 3.0)
    assert fake.search_calls == 1


@pytest.mark.parametrize(("status", "expected"), [
    (500, (500, True, False)), (429, (429, True, False)), (400, (400, False, True)),
])
async def test_status_faults_map_to_upstream_errors(store: WeaviateStore, fake: FakeWeaviate, status: int,
                                                    expected: tuple[int, bool, bool]) -> None:
    fake.set_faults(status=status)
    with pytest.raises(UpstreamError) as err:
        await store.search(np.array(unit(1)), top_k=3)
    assert (err.value.status, err.value.retryable, err.value.caller_fault) == expected


async def test_504_and_reset_faults(store: WeaviateStore, fake: FakeWeaviate) -> None:
    fake.set_faults(status=504)
    with pytest.raises(TimeoutError):
        await store.count()
    fake.set_faults(status=None, reset=True)
    with pytest.raises(UpstreamError) as err:
        await store.upsert(CHUNKS, VECTORS)
    assert err.value.status == 503 and fake.batch_calls == 1


async def test_latency_fault_exceeds_a_short_deadline(store: WeaviateStore, fake: FakeWeaviate) -> None:
    fake.set_faults(latency_s=1.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await store.search(np.array(unit(1)), top_k=3)
    assert time.monotonic() - started < 0.6
    await asyncio.wait_for(fake.wait_for_calls(cancelled=1), 2.0)  # the cancel reached the server


async def test_client_query_timeout_becomes_timeout_error(fake: FakeWeaviate) -> None:
    s = WeaviateStore(store_config(fake, timeout_s=0.2))  # Timeout(query=0.2): the gRPC deadline
    await s.connect()
    try:
        await s.ensure_collection()
        fake.set_faults(latency_s=1.0)
        with pytest.raises(TimeoutError):
            await s.search(np.array(unit(1)), top_k=1)
    finally:
        await s.close()


async def test_hang_is_released_when_faults_clear(store: WeaviateStore, fake: FakeWeaviate) -> None:
    await store.upsert(CHUNKS, VECTORS)
    fake.set_faults(hang=True)
    pending = asyncio.create_task(store.search(np.array(unit(0, 1)), top_k=1))
    await asyncio.wait_for(fake.wait_for_calls(search=1), 2.0)
    assert not pending.done()

    fake.clear_faults()
    hits = await asyncio.wait_for(pending, 2.0)
    assert [h.id for h in hits] == ["c-tax"]


async def test_error_rate_is_deterministic_per_seed(store: WeaviateStore, fake: FakeWeaviate) -> None:
    async def outcomes(server: FakeWeaviate, target: WeaviateStore) -> list[bool]:
        server.set_faults(status=503, error_rate=0.5)
        results = []
        for _ in range(12):
            try:
                await target.count()
                results.append(True)
            except UpstreamError:
                results.append(False)
        server.clear_faults()
        return results

    twin = FakeWeaviate(seed=1)  # same seed as the fixture's fake
    await twin.start()
    twin_store = WeaviateStore(store_config(twin))
    try:
        await twin_store.connect()
        await twin_store.ensure_collection()
        first, second = await outcomes(fake, store), await outcomes(twin, twin_store)
    finally:
        await twin_store.close()
        await twin.stop()
    assert first == second and True in first and False in first


async def test_raw_client_retry_sleeps_until_our_deadline_and_stops_on_cancel(
        client: weaviate.WeaviateAsyncClient, fake: FakeWeaviate) -> None:
    """Without WeaviateStore's fail-fast wrapper the client sleeps 1 s after an UNAVAILABLE;
    cancelling our task must end that retry loop: no second attempt reaches the server."""
    fake.add_collection("Raw", ["text"])
    raw = client.collections.use("Raw")
    fake.set_faults(status=503)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await raw.query.fetch_objects()
    assert fake.search_calls == 1
    with pytest.raises(TimeoutError):  # the first retry would have arrived at ~1 s
        await asyncio.wait_for(fake.wait_for_calls(search=2), 1.5)


async def test_faults_control_endpoint(store: WeaviateStore, fake: FakeWeaviate) -> None:
    base = f"http://127.0.0.1:{fake.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/__faults__", json={"status": 503}) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == 503
        async with http.get(f"{base}/__faults__") as resp:
            assert (await resp.json())["status"] == 503
        with pytest.raises(UpstreamError):
            await store.search(np.array(unit(1)), top_k=1)
        async with http.get(f"{base}/__stats__") as resp:
            assert (await resp.json())["search_calls"] == 1
        async with http.patch(f"{base}/__faults__", json={"latency_s": 0.01}) as resp:  # PATCH merges
            assert (await resp.json())["status"] == 503
        async with http.put(f"{base}/__faults__", json={"nonsense": 1}) as resp:
            assert resp.status == 400
        async with http.delete(f"{base}/__faults__") as resp:
            assert (await resp.json())["status"] is None
        assert await store.search(np.array(unit(1)), top_k=1) == []
        async with http.delete(f"{base}/__stats__") as resp:
            assert (await resp.json())["search_calls"] == 0


async def test_meta_faults_fail_connect(fake: FakeWeaviate) -> None:
    fake.set_faults(status=503)
    with pytest.raises(UpstreamError) as err:
        await WeaviateStore(store_config(fake)).connect()
    assert err.value.status == 503 and err.value.retryable
    fake.set_faults(status=None, reset=True)
    with pytest.raises(UpstreamError) as err:
        await WeaviateStore(store_config(fake)).connect()
    assert err.value.status == 503


async def test_stop_releases_hung_calls_with_unavailable(store: WeaviateStore, fake: FakeWeaviate) -> None:
    fake.set_faults(hang=True)
    pending = asyncio.create_task(store.search(np.array(unit(1)), top_k=1))
    await asyncio.wait_for(fake.wait_for_calls(search=1), 2.0)
    await fake.stop()
    with pytest.raises(UpstreamError) as err:
        await asyncio.wait_for(pending, 2.0)
    assert err.value.status == 503
