"""The embedded vector store: one numpy matrix per KB version, memory-mapped from the data dir.

Exact (brute-force) cosine search. At 100k × 384 float32 a query is one mat-vec product (~10 ms on
2 cores, see ``bench/``) and the matrix is mapped, not copied, so RSS grows only with the pages
touched. No server, nothing to download, survives restart (it *is* the files on disk).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from fallback.chunktable import ChunkTable
from fallback.documents import Chunk
from fallback.filters import matches
from resilience.errors import UpstreamError


class EmbeddedStore:
    """Vector search over a KB version directory holding ``vectors.npy`` and the chunk list."""

    name = "embedded"
    serves_kb_versions = True

    def __init__(self) -> None:
        self._state: tuple[np.ndarray, ChunkTable] | None = None
        self.version: str | None = None
        self.unavailable: str | None = None

    async def connect(self) -> None:
        """Nothing to open: the vectors are files in the data dir."""

    def load(self, version: str, version_dir: Path, chunks: ChunkTable, vectors: np.ndarray | None = None,
             *, unavailable: str | None = None) -> None:
        """Swap in a KB version: one assignment, so a concurrent search sees the old or the new pair.

        ``vectors``: the version's matrix as loaded by ``gateway.kb`` (a private copy; mapping
        ``version_dir`` itself is only for callers that own the directory). ``unavailable``: why there
        are no vectors to serve (a KB served from its keyword index alone): searches then raise.
        """
        if unavailable is not None:
            self._state, self.version, self.unavailable = None, version, unavailable
            return
        if vectors is None:
            path = version_dir / "vectors.npy"
            vectors = np.load(path, mmap_mode="r") if path.exists() else np.zeros((0, 0), np.float32)
        if vectors.shape[0] != len(chunks):
            raise ValueError(f"{version}: {vectors.shape[0]} vectors for {len(chunks)} chunks")
        self._state, self.version, self.unavailable = (vectors, chunks), version, None

    async def search(self, vector: np.ndarray | None, top_k: int, *, query_text: str | None = None,
                     filters: dict[str, Any] | None = None) -> list[Chunk]:
        if vector is None:
            raise ValueError("the embedded store needs a query vector (embedder backend 'none' is for Weaviate)")
        if self.unavailable is not None:
            raise UpstreamError(f"no verified vectors to search: {self.unavailable}", retryable=False)
        if self._state is None or len(self._state[1]) == 0:
            return []
        vectors, chunks = self._state
        # The mat-vec releases the GIL; at 100k rows it is long enough to keep off the event loop.
        if len(chunks) > 20_000:
            return await asyncio.to_thread(self._search, vectors, chunks, vector, top_k, filters)
        return self._search(vectors, chunks, vector, top_k, filters)

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
        return 0 if self._state is None else len(self._state[1])

    async def iterate(self) -> AsyncIterator[Chunk]:
        if self._state is not None:
            for chunk in self._state[1]:
                yield chunk

    async def close(self) -> None:
        self._state = None
