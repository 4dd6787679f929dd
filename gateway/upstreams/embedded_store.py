"""The embedded vector store: one numpy matrix per KB version, memory-mapped from the data dir.

Exact (brute-force) cosine search. At 100k × 384 float32 a query is one mat-vec product (~10 ms on
2 cores, see ``bench/``) and the matrix is mapped, not copied, so RSS grows only with the pages
touched. No server, nothing to download, survives restart (it *is* the files on disk).

Progressive versions (``gateway.progressive``): until a version's quality vectors are complete the store
serves its fast-tier set and embeds each query itself with the fast model (``fast_embedder``, ~0.1 ms; the
pipeline skips the quality embed while :attr:`EmbeddedStore.embeds_queries`). The upgrade swaps the
quality set in with one assignment; a query that skipped the quality embed just before the swap is
answered from the retired fast set, so no request fails across it. Results say which set answered
(:attr:`SearchResult.vectors`).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from fallback.chunktable import ChunkTable
from fallback.documents import Chunk
from fallback.filters import matches
from resilience.errors import UpstreamError


class SearchResult(list[Chunk]):
    """Chunks best first, and which vector set answered them: ``quality`` or ``fast``."""

    vectors: str = "quality"


@dataclass(frozen=True)
class _Served:
    vectors: np.ndarray
    chunks: ChunkTable
    tier: str  # "quality" | "fast"


class EmbeddedStore:
    """Vector search over a KB version directory holding ``vectors.npy`` and the chunk list."""

    name = "embedded"
    serves_kb_versions = True

    def __init__(self, fast_embedder: Any = None) -> None:
        self._served: _Served | None = None
        self._retired_fast: _Served | None = None  # the fast set just swapped out, for in-flight queries
        self.version: str | None = None
        self.unavailable: str | None = None
        self.fast_embedder = fast_embedder  # embeds queries while a fast-tier set is served

    @property
    def tier(self) -> str | None:
        """The vector set served: ``fast``, ``quality``, or None (nothing loaded)."""
        return None if self._served is None else self._served.tier

    @property
    def embeds_queries(self) -> bool:
        """True while a fast-tier set is served: the store embeds the query text with the fast model."""
        return self._served is not None and self._served.tier == "fast"

    async def connect(self) -> None:
        """Nothing to open: the vectors are files in the data dir."""

    def load(self, version: str, version_dir: Path, chunks: ChunkTable, vectors: np.ndarray | None = None,
             *, unavailable: str | None = None, tier: str = "quality") -> None:
        """Swap in a KB version: one assignment, so a concurrent search sees the old or the new pair.

        ``vectors``: the version's matrix as loaded by ``gateway.kb`` (a private copy; mapping
        ``version_dir`` itself is only for callers that own the directory). ``unavailable``: why there
        are no vectors to serve (a KB served from its keyword index alone): searches then raise.
        ``tier``: ``fast`` for a progressive version's fast-tier set (needs ``fast_embedder``).
        """
        if tier == "fast" and self.fast_embedder is None:
            raise ValueError(f"{version}: a fast-tier vector set needs the store's fast embedder")
        previous = self._served
        if unavailable is not None:
            self._served, self._retired_fast, self.version, self.unavailable = None, None, version, unavailable
            return
        if vectors is None:
            path = version_dir / "vectors.npy"
            vectors = np.load(path, mmap_mode="r") if path.exists() else np.zeros((0, 0), np.float32)
        if vectors.shape[0] != len(chunks):
            raise ValueError(f"{version}: {vectors.shape[0]} vectors for {len(chunks)} chunks")
        # The same version going fast → quality (the upgrade): in-flight fast queries finish on the old set.
        same = previous is not None and previous.tier == "fast" and self.version == version
        self._served, self._retired_fast = _Served(vectors, chunks, tier), previous if same else None
        self.version, self.unavailable = version, None

    async def search(self, vector: np.ndarray | None, top_k: int, *, query_text: str | None = None,
                     filters: dict[str, Any] | None = None) -> SearchResult:
        if self.unavailable is not None:
            raise UpstreamError(f"no verified vectors to search: {self.unavailable}", retryable=False)
        served = self._served
        if served is None or len(served.chunks) == 0:
            return SearchResult()
        if served.tier == "quality" and vector is None and self._retired_fast is not None:
            served = self._retired_fast  # the caller saw the fast set and skipped the quality embed
        if served.tier == "fast":
            if query_text is None:
                raise ValueError("a fast-tier vector set is searched by query text")
            vector = await self.fast_embedder.embed_query(query_text)
        if vector is None:
            raise ValueError("the embedded store needs a query vector (embedder backend 'none' is for Weaviate)")
        vectors, chunks = served.vectors, served.chunks
        # The mat-vec releases the GIL; at 100k rows it is long enough to keep off the event loop.
        if len(chunks) > 20_000:
            found = await asyncio.to_thread(self._search, vectors, chunks, vector, top_k, filters)
        else:
            found = self._search(vectors, chunks, vector, top_k, filters)
        result = SearchResult(found)
        result.vectors = served.tier
        return result

    @staticmethod
    def _search(vectors: np.ndarray, chunks: ChunkTable, vector: np.ndarray, top_k: int,
                filters: dict[str, Any] | None) -> list[Chunk]:
        scores = vectors @ np.asarray(vector, dtype=np.float32)
        if filters:
            mask = np.fromiter((matches(c, filters) for c in chunks.lights()), dtype=bool, count=len(chunks))
            scores = np.where(mask, scores, -np.inf)
        k = min(top_k, len(chunks))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [chunks[i].scored(float(scores[i]), "vector") for i in top if np.isfinite(scores[i])]

    async def count(self) -> int:
        return 0 if self._served is None else len(self._served.chunks)

    async def iterate(self) -> AsyncIterator[Chunk]:
        if self._served is not None:
            for chunk in self._served.chunks:
                yield chunk

    async def close(self) -> None:
        self._served = self._retired_fast = None
        if self.fast_embedder is not None:
            await self.fast_embedder.close()
