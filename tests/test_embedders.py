"""The offline embedders: pinned weights, the query window, the LRU of query vectors."""
from __future__ import annotations

import numpy as np
import pytest

from gateway.upstreams import onnx_embedder
from gateway.upstreams.onnx_embedder import MiniLMEmbedder, ModelFileError
from gateway.upstreams.query_cache import QueryCacheEmbedder


def test_weights_that_are_not_the_pinned_file_are_refused(monkeypatch):
    monkeypatch.setattr(onnx_embedder, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelFileError, match="is not the pinned"):
        onnx_embedder._model_file()


async def test_minilm_embeds_normalised_vectors_that_rank_the_matching_passage_first():
    emb = MiniLMEmbedder()
    try:
        passages = await emb.embed_passages(["Copy an entire directory tree with copytree.",
                                             "Green tea is brewed at 70 to 80 degrees."])
        query = await emb.embed_query("how do I copy a folder recursively")
        assert passages.shape == (2, 384) and passages.dtype == np.float32
        assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-5)
        assert np.argmax(passages @ query) == 0
        cut, tokens = emb.truncate_query("word " * 1000)
        assert tokens == emb.max_query_tokens and len(cut.split()) == emb.max_query_tokens - 2
        assert emb.truncate_query("short question") == ("short question", 4)
    finally:
        await emb.close()


class CountingEmbedder:
    model_id = "test:counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        self.calls.append(text)
        return np.full(4, len(self.calls), dtype=np.float32)

    async def close(self) -> None:
        pass


async def test_query_cache_is_a_bounded_lru():
    inner = CountingEmbedder()
    cache = QueryCacheEmbedder(inner, size=2)
    first = await cache.embed_query("a")
    assert (await cache.embed_query("a")) is first and inner.calls == ["a"]
    await cache.embed_query("b")
    await cache.embed_query("a")  # a is now the most recent
    await cache.embed_query("c")  # evicts b, the least recently used
    await cache.embed_query("a")
    await cache.embed_query("b")
    assert inner.calls == ["a", "b", "c", "b"]
    assert cache.snapshot() == {"size": 2, "capacity": 2, "hits": 3, "misses": 4}
    assert cache.model_id == "test:counting"  # the wrapper reports the model it caches for
    with pytest.raises(ValueError):
        first[0] = 1.0  # cached vectors are read-only: a caller cannot corrupt the next hit
