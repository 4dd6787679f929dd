"""In-process measurements, each run in a fresh child process so RSS deltas and caches are its own.

    python -m bench.workers ingest-sample DATA_DIR CORPUS  embed a corpus with the local embedder (a KB)
    python -m bench.workers gen OUT_DIR N                 synthetic corpus (chunks.jsonl + vectors.npy)
    python -m bench.workers kw-build CORPUS N INDEX_DIR    KeywordIndex.build + save
    python -m bench.workers kw-query INDEX_DIR N           KeywordIndex.load + queries
    python -m bench.workers vec CORPUS N WORK_DIR          embedded vector store: write, load, queries
    python -m bench.workers make-kb CORPUS N DATA_DIR      a KB version (chunks + vectors + keyword index)
    python -m bench.workers kb-load-mem DATA_DIR           anonymous memory KnowledgeBase.load leaves behind
    python -m bench.workers fastfail DATA_DIR ROUNDS N     pipeline retrieve with a breaker open vs BM25

Each prints one JSON object as its last stdout line.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import synthetic
from bench.stats import summarize_ms

ROOT = Path(__file__).resolve().parent.parent
TOP_K = 5


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples RSS every 5 ms in a thread (ru_maxrss would report the corpus loading's peak instead)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20, 2)


def timed_ms(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# --- scale: keyword index ------------------------------------------------------------------------

def kw_build(corpus: Path, n: int, index_dir: Path) -> dict:
    from fallback.bm25 import KeywordIndex

    chunks = synthetic.read_chunks(corpus, n)
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    with PeakRss() as peak:
        index = KeywordIndex.build(chunks)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.save(index_dir)
    return {"build_s": round(build_s, 3), "save_s": round(time.perf_counter() - t0, 3),
            "build_peak_rss_delta_mb": round(peak.peak - rss0, 1), "disk_mb": dir_mb(index_dir)}


def kw_query(index_dir: Path, n: int) -> dict:
    from fallback.bm25 import KeywordIndex

    qs = synthetic.queries(300)
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index = KeywordIndex.load(index_dir)
    load_s = time.perf_counter() - t0
    for q in qs[:30]:  # warm-up: first-touch page faults
        index.search(q, TOP_K)
    lat = []
    for q in qs:
        t0 = time.perf_counter()
        index.search(q, TOP_K)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"load_s": round(load_s, 3), "rss_delta_mb": round(rss_mb() - rss0, 1),
            **{f"query_{k}": v for k, v in summarize_ms(lat).items() if k != "count"}, "queries": len(lat)}


# --- scale: embedded vector store ----------------------------------------------------------------

def vec(corpus: Path, n: int, work_dir: Path) -> dict:
    from gateway.upstreams.embedded_store import EmbeddedStore

    work_dir.mkdir(parents=True, exist_ok=True)
    source = np.load(corpus / synthetic.VECTORS_FILE, mmap_mode="r")
    vectors = np.ascontiguousarray(source[:n])
    t0 = time.perf_counter()
    np.save(work_dir / "vectors.npy", vectors)
    write_s = time.perf_counter() - t0
    disk_mb = round((work_dir / "vectors.npy").stat().st_size / 2**20, 2)
    del vectors, source
    gc.collect()
    # The chunk records the store (and the KB) keep in memory: a real part of the gateway's RSS. Built the
    # way KnowledgeBase.load builds them (a ChunkTable over chunks.jsonl where that exists, else Chunk objects).
    try:
        from fallback.chunktable import ChunkTable
    except ImportError:
        ChunkTable = None  # type: ignore[assignment,misc]
    if ChunkTable is not None:
        with open(corpus / synthetic.CHUNKS_FILE, encoding="utf-8") as src, \
                open(work_dir / "chunks.jsonl", "w", encoding="utf-8") as dst:
            for _, line in zip(range(n), src):
                dst.write(line)
    gc.collect()
    rss0 = rss_mb()
    chunks = ChunkTable(work_dir / "chunks.jsonl") if ChunkTable is not None else synthetic.read_chunks(corpus, n)
    chunks_rss = rss_mb() - rss0
    # The first scan reads the file from the page cache (just written), as a warm gateway would.
    gc.collect()
    rss1 = rss_mb()
    store = EmbeddedStore()
    t0 = time.perf_counter()
    store.load("bench", work_dir, chunks)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb() - rss1
    qv = synthetic.unit_vectors(230, seed=99)

    async def run() -> list[float]:
        for v in qv[:30]:
            await store.search(v, TOP_K)
        lat = []
        for v in qv[30:]:
            t0 = time.perf_counter()
            await store.search(v, TOP_K)
            lat.append((time.perf_counter() - t0) * 1e3)
        return lat

    lat = asyncio.run(run())
    return {"write_s": round(write_s, 3), "load_s": round(load_s, 4), "disk_mb": disk_mb,
            "rss_after_load_mb": round(rss_loaded, 1), "rss_delta_mb": round(rss_mb() - rss1, 1),
            "chunk_records_rss_mb": round(chunks_rss, 1),
            **{f"query_{k}": v for k, v in summarize_ms(lat).items() if k != "count"}, "queries": len(lat),
            "chunk_records": type(chunks).__name__}


# --- a KB version at scale (for the memory section) ----------------------------------------------

class PrecomputedEmbedder:
    """Hands out rows of a precomputed matrix in call order (create_version embeds chunks in order)."""

    name = "synthetic"
    dim = synthetic.DIM

    def __init__(self, vectors: np.ndarray) -> None:
        self._v, self._pos = vectors, 0

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        out = np.asarray(self._v[self._pos:self._pos + len(texts)], dtype=np.float32)
        self._pos += len(texts)
        return out


def make_kb(corpus: Path, n: int, data_dir: Path) -> dict:
    from gateway.kb import KnowledgeBase

    chunks = synthetic.read_chunks(corpus, n)
    vectors = np.load(corpus / synthetic.VECTORS_FILE, mmap_mode="r")[:n]
    kb = KnowledgeBase(data_dir / "kb")
    t0 = time.perf_counter()
    version = asyncio.run(kb.create_version(chunks, embedder=PrecomputedEmbedder(vectors), batch_size=10_000,
                                            label=f"synthetic {n}"))
    return {"version": version, "seconds": round(time.perf_counter() - t0, 2), "disk_mb": dir_mb(data_dir / "kb")}


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def kb_load_mem(data_dir: Path) -> dict:
    """Anonymous memory ``KnowledgeBase.load`` leaves behind, and how much of it is freed heap glibc keeps."""
    import ctypes

    from gateway.kb import KnowledgeBase

    gc.collect()
    a0 = _anon_mb()
    t0 = time.perf_counter()
    kb = KnowledgeBase(data_dir / "kb").load()
    load_s = time.perf_counter() - t0
    gc.collect()
    a1 = _anon_mb()
    trimmed = None
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = _anon_mb()
    except OSError:
        pass
    return {"chunks": len(kb.chunks) if kb else 0, "load_s": round(load_s, 2), "anon_after_load_mb": round(a1 - a0, 1),
            "anon_after_malloc_trim_mb": None if trimmed is None else round(trimmed - a0, 1)}


# --- breaker-open fast fail ----------------------------------------------------------------------

def golden_queries() -> list[str]:
    lines = (ROOT / "corpus" / "golden.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["query"] for line in lines if line.strip()]


async def _fastfail(data_dir: Path, rounds: int, n_queries: int) -> dict:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.pipeline import QueryRequest, Trace
    from gateway.state import STATE
    from resilience import Deadline

    settings = load_settings(None, env={}, overrides={"server.data_dir": str(data_dir), "logging.level": "WARNING"})
    app = create_app(settings, configure_logging=False)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        state = app[STATE]
        await asyncio.wait_for(state.ready.wait(), timeout=120)
        pipeline, guards = state.pipeline, state.guards
        index = state.kb.keyword_index
        qs = golden_queries()[:n_queries]

        async def retrieve(q: str) -> str | None:
            trace = Trace()
            await pipeline.retrieve(QueryRequest(query=q, top_k=TOP_K), Deadline(10.0), trace)
            return trace.retriever

        async def direct(q: str) -> str:
            index.search(q, TOP_K)
            return "bm25"

        variants: dict[str, tuple[Callable[[str], Any], tuple[str, ...]]] = {
            "direct_bm25": (direct, ()),
            "vector_db_open": (retrieve, ("vector_db",)),
            "embedder_open": (retrieve, ("embedder",)),
            "normal": (retrieve, ()),
        }
        for q in qs[:5]:  # warm: loads the embedder's model, touches the index and the vectors
            await retrieve(q)
            index.search(q, TOP_K)
        lat: dict[str, list[float]] = {k: [] for k in variants}
        retrievers: dict[str, Counter] = {k: Counter() for k in variants}
        failures: dict[str, Counter] = {k: Counter() for k in variants}
        for _ in range(rounds):  # interleaved blocks, so drift hits every variant alike
            for name, (fn, open_breakers) in variants.items():
                for g in guards:  # a fresh start per block: one block's timeouts must not open the next's breakers
                    g.breaker.reset()
                for g in open_breakers:
                    guards[g].breaker.force_open()
                before = {g.name: dict(g.stats["failures_by_reason"]) for g in guards}
                for q in qs:
                    t0 = time.perf_counter()
                    retrievers[name][await fn(q) or "none"] += 1
                    lat[name].append((time.perf_counter() - t0) * 1e3)
                for g in guards:
                    for reason, count in g.stats["failures_by_reason"].items():
                        delta = count - before[g.name].get(reason, 0)
                        if delta and g.name not in open_breakers:
                            failures[name][f"{g.name} {reason}"] += delta
        for g in guards:
            g.breaker.reset()
        out = {name: summarize_ms(v) for name, v in lat.items()}
        for name in out:
            out[name]["retriever"] = dict(retrievers[name])
            out[name]["guard_failures"] = dict(failures[name])
        return {"variants": out, "queries_per_round": len(qs), "rounds": rounds,
                "kb_chunks": len(state.kb.chunks)}
    finally:
        await runner.cleanup()


def fastfail(data_dir: Path, rounds: int, n_queries: int) -> dict:
    return asyncio.run(_fastfail(data_dir, rounds, n_queries))


def ingest_sample(data_dir: Path, corpus: Path) -> dict:
    """Embed ``corpus`` with the gateway's local embedder into a KB version, as a first ``make serve`` does."""
    from gateway.config import load_settings
    from gateway.kb import KnowledgeBase
    from gateway.upstreams.factory import build_local_embedder

    s = load_settings(None, env={}, overrides={"server.data_dir": str(data_dir)})
    last = [-1]

    def progress(stage: str, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct // 20 != last[0]:
            last[0] = pct // 20
            print(f"[bench worker] ingest {stage}: {done}/{total}", file=sys.stderr, flush=True)

    async def run() -> str:
        emb = build_local_embedder(s)
        try:
            return await KnowledgeBase(data_dir / "kb").ingest(
                [corpus], embedder=emb, chunk_chars=s.kb.chunk_chars, overlap=s.kb.chunk_overlap,
                batch_size=s.embedder.batch_size, progress=progress, label="bench sample corpus")
        finally:
            await emb.close()

    t0 = time.perf_counter()
    version = asyncio.run(run())
    return {"version": version, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == "ingest-sample":
        out = ingest_sample(Path(args[0]), Path(args[1]))
    elif cmd == "gen":
        out = synthetic.write_corpus(Path(args[0]), int(args[1]))
    elif cmd == "kw-build":
        out = kw_build(Path(args[0]), int(args[1]), Path(args[2]))
    elif cmd == "kw-query":
        out = kw_query(Path(args[0]), int(args[1]))
    elif cmd == "vec":
        out = vec(Path(args[0]), int(args[1]), Path(args[2]))
    elif cmd == "make-kb":
        out = make_kb(Path(args[0]), int(args[1]), Path(args[2]))
    elif cmd == "kb-load-mem":
        out = kb_load_mem(Path(args[0]))
    elif cmd == "fastfail":
        out = fastfail(Path(args[0]), int(args[1]), int(args[2]))
    else:
        print(f"unknown worker command {cmd!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
