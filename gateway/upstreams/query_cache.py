"""A bounded LRU of query embeddings in front of the embedder: a repeated question skips the model.

Keyed by the exact query text; one cache per embedder (so per model). Entries are read-only float32
vectors (~1.5 KB at 384-d: the default 2,048 entries hold ~3 MB). Concurrent misses on the same text
each embed it (no single-flight): simple, and the fair queue bounds what one client can queue.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np


class QueryCacheEmbedder:
    """Wraps an embedder; ``embed_query`` answers from the cache, everything else is delegated."""

    def __init__(self, inner: Any, *, size: int) -> None:
        self.inner = inner
        self.size = size
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        vec = self._lru.get(text)
        if vec is not None:
            self._lru.move_to_end(text)
            self.hits += 1
            return vec
        self.misses += 1
        vec = np.asarray(await self.inner.embed_query(text, request_id=request_id), dtype=np.float32)
        vec.setflags(write=False)
        self._lru[text] = vec
        if len(self._lru) > self.size:
            self._lru.popitem(last=False)
        return vec

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return await self.inner.embed_passages(texts)

    def snapshot(self) -> dict[str, int]:
        return {"size": len(self._lru), "capacity": self.size, "hits": self.hits, "misses": self.misses}

    async def close(self) -> None:
        await self.inner.close()
