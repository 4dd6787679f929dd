"""Section 5 — gateway memory with a 100k-chunk KB: RSS idle and under load (process measured by psutil).

The KB version is built through ``KnowledgeBase.create_version`` (chunks + synthetic vectors + keyword
index); the gateway runs its embedded defaults over it in its own process (local embedder, embedded
store, extractive answers). Load: c=4 on /v1/query, first on the normal path (every query scans
the 100k × 384 matrix), then with the vector DB breaker forced open (keyword fallback); then the
normal path once more in a second gateway whose numpy BLAS pool is capped at one thread.
"""
from __future__ import annotations

import time
from typing import Any

from bench.context import (
    Context,
    breaker_states,
    golden_queries,
    reset_breakers,
    run_worker,
    warm,
)
from bench.procs import RssSampler, log
from bench.scale import QUICK_SIZES, SIZES

CHUNKS = max(SIZES)
QUICK_CHUNKS = max(QUICK_SIZES)
CONCURRENCY = 4
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1"}


def _mem(proc) -> dict[str, Any]:
    uss = proc.uss_mb()
    return {"rss_mb": round(proc.rss_mb(), 1), "uss_mb": round(uss, 1) if uss is not None else None,
            **proc.rss_split_mb()}


def run(ctx: Context) -> dict[str, Any]:
    n = QUICK_CHUNKS if ctx.quick else CHUNKS
    corpus = ctx.synthetic_corpus(n)  # the same cached corpus section 4 uses at its largest size
    data_dir = ctx.work / "memory-data"
    log(f"section 5: building a {n:,}-chunk KB version (chunks + vectors + keyword index)")
    kb = run_worker(["make-kb", str(corpus), str(n), str(data_dir)], timeout_s=600)
    log(f"  KB built in {kb['seconds']} s ({kb['disk_mb']} MB on disk)")
    kb_load = run_worker(["kb-load-mem", str(data_dir)], timeout_s=300)
    t0 = time.perf_counter()
    gw = ctx.gateway("gateway-memory", {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus)})
    ready_s = time.perf_counter() - t0
    bodies = [{"query": q} for q in golden_queries()]
    out: dict[str, Any] = {"chunks": n, "kb": kb, "kb_load": kb_load, "start_to_ready_s": round(ready_s, 2)}
    try:
        base = f"http://127.0.0.1:{gw.info['port']}"
        time.sleep(1.0)
        out["idle_after_ready"] = _mem(gw)
        warm(f"{base}/v1/query", bodies)
        time.sleep(0.5)
        out["idle_after_first_query"] = _mem(gw)
        samplers = []
        for key, label, force_open, stages in (
                ("load_vector", f"normal path (embed + {n:,}-row vector scan + extractive)", (), ("embed", "vector_search")),
                ("load_keyword", "keyword fallback (vector_db breaker forced open)", ("vector_db",),
                 ("embed", "keyword_search"))):
            log(f"  load c={CONCURRENCY}: {label}")
            reset_breakers(gw, force_open)
            with RssSampler(gw) as sampler:
                out[key] = ctx.point(f"{base}/v1/query", bodies, CONCURRENCY, {"server": gw}, unique_field="query",
                                     server_timing=stages)
            out[key]["peak_rss_mb"] = round(sampler.peak_mb, 1)
            out[key]["breakers_after"] = breaker_states(gw)
            samplers.append(sampler)
        reset_breakers(gw)
        out["after_load"] = _mem(gw)
        out["peak_rss_mb"] = round(max(s.peak_mb for s in samplers), 1)
        out["rss_timeline"] = {"vector": samplers[0].samples, "keyword": samplers[1].samples}
    finally:
        ctx.stop(gw)
    # The same normal-path load with numpy's BLAS pool capped at one thread: on 2 cores its spinning threads
    # and the embedder's OpenMP threads slow each other down (see docs/benchmarks.md).
    gw = ctx.gateway("gateway-memory-1blas", {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus)},
                     env_extra=ONE_BLAS_THREAD)
    try:
        base = f"http://127.0.0.1:{gw.info['port']}"
        warm(f"{base}/v1/query", bodies)
        log(f"  load c={CONCURRENCY}: normal path again, OPENBLAS_NUM_THREADS=1")
        with RssSampler(gw) as sampler:
            out["load_vector_one_blas"] = ctx.point(f"{base}/v1/query", bodies, CONCURRENCY, {"server": gw},
                                                    unique_field="query", server_timing=("embed", "vector_search"))
        out["load_vector_one_blas"]["peak_rss_mb"] = round(sampler.peak_mb, 1)
        out["load_vector_one_blas"]["breakers_after"] = breaker_states(gw)
        out["load_vector_one_blas"]["env"] = ONE_BLAS_THREAD
    finally:
        ctx.stop(gw)
    return out
