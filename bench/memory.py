"""Section 5 — gateway memory with a 100k-chunk KB: RSS idle and under load (process measured by psutil).

The KB version is built through ``KnowledgeBase.create_version`` (chunks + synthetic vectors + keyword
index); the gateway runs its embedded defaults over it in its own process (local embedder, embedded
store, extractive answers). Load: c=4 on /v1/query, first on the normal path (every query scans
the 100k × 384 matrix), then with the vector DB breaker forced open (keyword fallback).
"""
from __future__ import annotations

import time
from typing import Any

from bench.context import ADMIN_TOKEN, Context, golden_queries, run_worker
from bench.procs import RssSampler, http_json, log
from bench.scale import QUICK_SIZES, SIZES

CHUNKS = max(SIZES)
QUICK_CHUNKS = max(QUICK_SIZES)
CONCURRENCY = 4


def _mem(proc) -> dict[str, Any]:
    uss = proc.uss_mb()
    return {"rss_mb": round(proc.rss_mb(), 1), "uss_mb": round(uss, 1) if uss is not None else None}


def run(ctx: Context) -> dict[str, Any]:
    n = QUICK_CHUNKS if ctx.quick else CHUNKS
    corpus = ctx.synthetic_corpus(n)  # the same cached corpus section 4 uses at its largest size
    data_dir = ctx.work / "memory-data"
    log(f"section 5: building a {n:,}-chunk KB version (chunks + vectors + keyword index)")
    kb = run_worker(["make-kb", str(corpus), str(n), str(data_dir)], timeout_s=600)
    log(f"  KB built in {kb['seconds']} s ({kb['disk_mb']} MB on disk)")
    t0 = time.perf_counter()
    gw = ctx.gateway("gateway-memory", {"server.data_dir": str(data_dir), "auth.admin_token": ADMIN_TOKEN,
                                         "kb.sample_corpus": str(ctx.sample_corpus)})
    ready_s = time.perf_counter() - t0
    try:
        base = f"http://127.0.0.1:{gw.info['port']}"
        time.sleep(1.0)
        out: dict[str, Any] = {"chunks": n, "kb": kb, "start_to_ready_s": round(ready_s, 2),
                               "idle_after_ready": _mem(gw)}
        http_json("POST", f"{base}/v1/query", {"query": "warm up the embedder"})
        time.sleep(0.5)
        out["idle_after_first_query"] = _mem(gw)
        bodies = [{"query": q} for q in golden_queries()]
        log(f"  load c={CONCURRENCY}: normal path (embed + {n:,}-row vector scan + extractive)")
        with RssSampler(gw) as s1:
            out["load_vector"] = ctx.point(f"{base}/v1/query", bodies, CONCURRENCY, {"server": gw},
                                           unique_field="query", server_timing=("embed", "vector_search"))
        out["load_vector"]["peak_rss_mb"] = round(s1.peak_mb, 1)
        log(f"  load c={CONCURRENCY}: keyword fallback (vector_db breaker forced open)")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        http_json("POST", f"{base}/admin/breakers/vector_db/open", headers=auth)
        try:
            with RssSampler(gw) as s2:
                out["load_keyword"] = ctx.point(f"{base}/v1/query", bodies, CONCURRENCY, {"server": gw},
                                                unique_field="query", server_timing=("embed", "keyword_search"))
            out["load_keyword"]["peak_rss_mb"] = round(s2.peak_mb, 1)
        finally:
            http_json("POST", f"{base}/admin/breakers/vector_db/reset", headers=auth)
        out["after_load"] = _mem(gw)
        out["peak_rss_mb"] = round(max(s1.peak_mb, s2.peak_mb), 1)
        out["rss_timeline"] = {"vector": s1.samples, "keyword": s2.samples}
        return out
    finally:
        ctx.stop(gw)
