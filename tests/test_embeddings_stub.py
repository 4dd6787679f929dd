"""OpenAIEmbedder against the embeddings stand-in: vectors, batching, auth, and each fault's mapping."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from chaos.stubs.embeddings import DEFAULT_DIM, FakeEmbeddings, embed_text
from gateway.config import EmbedderConfig
from gateway.upstreams.base import Embedder
from gateway.upstreams.httperrors import parse_retry_after
from gateway.upstreams.openai_embedder import OpenAIEmbedder, l2_normalise, parse_embeddings
from resilience.errors import Reason, UpstreamError

MODEL = "text-embedding-3-small"


@pytest.fixture
async def fake() -> AsyncIterator[FakeEmbeddings]:
    server = FakeEmbeddings()
    await server.start()
    yield server
    await server.stop()


def make_embedder(fake: FakeEmbeddings, **overrides: object) -> OpenAIEmbedder:
    cfg = {"backend": "openai", "url": f"{fake.url}/v1", "model": MODEL, "timeout_s": 5.0, **overrides}
    return OpenAIEmbedder(EmbedderConfig.model_validate(cfg))


@pytest.fixture
async def embedder(fake: FakeEmbeddings) -> AsyncIterator[OpenAIEmbedder]:
    backend = make_embedder(fake, batch_size=2)
    yield backend
    await backend.close()


# -- vectors --------------------------------------------------------------------------------------
async def test_query_vector_is_a_deterministic_float32_unit_vector(fake: FakeEmbeddings,
                                                                   embedder: OpenAIEmbedder) -> None:
    assert isinstance(embedder, Embedder) and embedder.dim is None
    vec = await embedder.embed_query("How do circuit breakers work?", request_id="rid-e")

    assert vec.shape == (DEFAULT_DIM,) and vec.dtype == np.float32
    assert float(np.linalg.norm(vec)) == pytest.approx(1.0, abs=1e-5)
    assert embedder.dim == DEFAULT_DIM
    np.testing.assert_allclose(vec, embed_text("How do circuit breakers work?"), atol=1e-6)
    seen = fake.requests[-1]
    assert seen.request_id == "rid-e" and seen.model == MODEL
    assert seen.body == {"model": MODEL, "input": ["How do circuit breakers work?"], "encoding_format": "float"}
    assert "authorization" not in seen.headers


async def test_texts_sharing_words_rank_above_unrelated_ones(embedder: OpenAIEmbedder) -> None:
    query = await embedder.embed_query("circuit breaker opens after failures")
    docs = await embedder.embed_passages([
        "Bananas are rich in potassium.",
        "A circuit breaker opens after repeated failures and fails fast.",
        "The breaker stays open for thirty seconds.",
    ])
    scores = docs @ query
    assert list(np.argsort(-scores)) == [1, 2, 0]
    assert scores[0] < 0.1 < scores[2] < scores[1]


async def test_passages_are_batched_and_keep_their_order(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    texts = [f"passage number {i} about topic {i % 2}" for i in range(5)]
    matrix = await embedder.embed_passages(texts, request_id="rid-batch")

    assert fake.batch_sizes == [2, 2, 1]
    assert [r.request_id for r in fake.requests] == ["rid-batch"] * 3
    assert matrix.shape == (5, DEFAULT_DIM) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, np.stack([embed_text(t) for t in texts]), atol=1e-6)


async def test_no_passages_means_no_request(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    assert (await embedder.embed_passages([])).shape == (0, 0)
    assert fake.requests_total == 0


async def test_stub_speaks_openai_json_incl_dimensions_and_base64(fake: FakeEmbeddings) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": MODEL, "input": "one text", "dimensions": 8, "encoding_format": "base64"}
        async with http.post(f"{fake.url}/v1/embeddings", json=body) as resp:
            payload = await resp.json()
        async with http.post(f"{fake.url}/v1/embeddings", json={"model": MODEL, "input": []}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert payload["object"] == "list" and payload["model"] == MODEL
    assert payload["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    item = payload["data"][0]
    assert (item["object"], item["index"]) == ("embedding", 0)
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, embed_text("one text", 8))


# -- auth -----------------------------------------------------------------------------------------
async def test_bearer_key_is_sent_and_checked() -> None:
    async with FakeEmbeddings(api_key="sk-test") as fake:
        good = make_embedder(fake, api_key="sk-test")
        bad = make_embedder(fake, api_key="sk-wrong")
        try:
            assert (await good.embed_query("hello")).shape == (DEFAULT_DIM,)
            with pytest.raises(UpstreamError) as info:
                await bad.embed_query("hello")
        finally:
            await good.close()
            await bad.close()
        assert fake.requests[0].headers["authorization"] == "Bearer sk-test"
    err = info.value
    assert (err.status, err.retryable, err.caller_fault) == (401, False, False)
    assert "Incorrect API key" in str(err)


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "retryable", "caller_fault"), [
    (429, True, False), (500, True, False), (503, True, False), (400, False, True), (404, False, False)])
async def test_status_faults_map_to_upstream_errors(fake: FakeEmbeddings, embedder: OpenAIEmbedder, status: int,
                                                    retryable: bool, caller_fault: bool) -> None:
    fake.set_faults(status=status)
    with pytest.raises(UpstreamError) as info:
        await embedder.embed_query("q")
    assert (info.value.status, info.value.retryable, info.value.caller_fault) == (status, retryable, caller_fault)
    assert "injected fault" in str(info.value)  # the upstream's error message is kept


async def test_429_carries_retry_after(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    fake.set_faults(status=429, retry_after_s=0.25)
    with pytest.raises(UpstreamError) as info:
        await embedder.embed_query("q")
    assert info.value.reason is Reason.RATE_LIMITED
    assert info.value.retry_after_s == pytest.approx(0.25)


async def test_malformed_json_is_a_retryable_502(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    fake.set_faults(malformed=True)
    with pytest.raises(UpstreamError) as info:
        await embedder.embed_query("q")
    assert (info.value.status, info.value.retryable) == (502, True)


async def test_reset_is_a_retryable_connection_error(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    fake.set_faults(reset=True)
    with pytest.raises(UpstreamError) as info:
        await embedder.embed_query("q")
    assert info.value.status is None and info.value.retryable
    assert isinstance(info.value.__cause__, aiohttp.ClientError)


async def test_hang_is_cut_by_the_callers_deadline_and_released_by_clear(fake: FakeEmbeddings,
                                                                         embedder: OpenAIEmbedder) -> None:
    fake.set_faults(hang=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await embedder.embed_query("q")
    assert time.monotonic() - started < 2.0

    held = asyncio.create_task(embedder.embed_query("q"))
    async with asyncio.timeout(5):
        await fake.wait_for_requests(2)
        fake.clear_faults()
        assert (await held).shape == (DEFAULT_DIM,)
    assert fake.stats["POST /v1/embeddings"].by_fault["hang"] == 2


async def test_client_timeout_backstop_raises_timeout_error(fake: FakeEmbeddings) -> None:
    fake.set_faults(latency_s=1.0)
    backend = make_embedder(fake, timeout_s=0.1)
    try:
        with pytest.raises(TimeoutError):
            await backend.embed_query("q")
    finally:
        await backend.close()


async def test_model_scoped_fault_only_hits_that_model(fake: FakeEmbeddings) -> None:
    fake.set_faults(status=503, models=["other-model"])
    backend = make_embedder(fake)
    try:
        assert (await backend.embed_query("q")).shape == (DEFAULT_DIM,)
    finally:
        await backend.close()
    assert fake.model_counts == {MODEL: 1} and fake.stats["POST /v1/embeddings"].faulted == 0


async def test_a_changed_vector_length_is_not_retryable(fake: FakeEmbeddings, embedder: OpenAIEmbedder) -> None:
    await embedder.embed_query("q")
    fake.dim = 64
    with pytest.raises(UpstreamError) as info:
        await embedder.embed_query("q")
    assert (info.value.status, info.value.retryable) == (502, False)


# -- parsing helpers ------------------------------------------------------------------------------
def test_parse_embeddings_orders_by_index_and_rejects_bad_shapes() -> None:
    body = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}]}
    matrix = parse_embeddings(json.dumps(body).encode(), 2)
    np.testing.assert_allclose(l2_normalise(matrix), [[0.6, 0.8], [0.0, 1.0]])

    for bad, expected in [(b'{"data": []}', 1), (b'{"data": [{"index": 0}]}', 1),
                          (b'{"data": [{"index": 0, "embedding": [1, 2]}, {"index": 1, "embedding": [1]}]}', 2),
                          (b'{"data": [{"index": 0, "embedding": [NaN]}]}', 1), (b"[1, 2]", 1)]:
        with pytest.raises(UpstreamError) as info:
            parse_embeddings(bad, expected)
        assert (info.value.status, info.value.retryable) == (502, True)


def test_retry_after_prefers_ms_then_seconds_then_http_date() -> None:
    assert parse_retry_after({"Retry-After": "3", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:10 GMT"},
                             now=1792567680.0) == pytest.approx(10.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
