"""Offline fast-tier embedder: WordLlama (static token embeddings, 256-d, average pooled).

No transformer: a passage costs a tokenization and a table lookup, so ingest runs at thousands of
passages/s on two cores (``python -m bench.embedders``) — but paraphrased questions are answered
worse than by MiniLM. Used where speed matters more than recall: the ``fast`` tier that makes a large
KB searchable at once (hybrid with BM25), and keyword-heavy corpora. Weights ship in the wheel; WordLlama
would fetch them from a hub by default, so it is loaded from its own package directory with downloads off.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DIM = 256


class WordLlamaEmbedder:
    name = "local"
    model_id = "local:wordllama-0.4.0/l2_supercat-256"
    dim: int | None = DIM
    max_query_tokens: int | None = None  # static embeddings: cost is linear and tiny, no window

    def __init__(self, batch_size: int = 64) -> None:
        self._batch = batch_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-static")
        self._model: Any = None

    def _get_model(self) -> Any:
        if self._model is None:
            import wordllama
            from wordllama import WordLlama

            self._model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True, dim=DIM)
        return self._model

    def truncate_query(self, text: str) -> tuple[str, int]:
        """Static embeddings have no window: the text unchanged, and its word count."""
        return text, len(text.split())

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = self._get_model().embed(texts, norm=True, batch_size=self._batch)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), DIM)

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        return (await asyncio.get_running_loop().run_in_executor(self._pool, self._embed, [text]))[0]

    async def embed_queries(self, texts: Sequence[str], *,
                            request_ids: Sequence[str | None] | None = None) -> np.ndarray:
        """Several queries in one call (the fair queue's dynamic batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._embed, list(texts))

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._embed, list(texts))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
