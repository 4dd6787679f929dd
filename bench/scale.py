"""Section 4 — scale: the keyword index and the embedded vector store from 1k to 100k synthetic chunks.

Every measurement runs in a fresh process (``bench.workers``), so RSS deltas belong to that step alone:
the keyword index is built in one process and loaded + queried in another; the vector store is
written, memory-mapped and queried (each query scans every row, so every page ends up resident).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

from bench.context import Context, run_worker
from bench.procs import log

SIZES = (1_000, 10_000, 30_000, 100_000)
QUICK_SIZES = (500, 2_000)
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def sizes(ctx: Context) -> tuple[int, ...]:
    return QUICK_SIZES if ctx.quick else SIZES


def run(ctx: Context) -> dict[str, Any]:
    ns = sizes(ctx)
    corpus = ctx.synthetic_corpus(max(ns))
    keyword, vector, vector_1t = [], [], []
    for n in ns:
        index_dir = ctx.work / f"scale-kw-{n}"
        shutil.rmtree(index_dir, ignore_errors=True)
        log(f"section 4: {n:,} chunks — keyword index build")
        row = {"chunks": n, **run_worker(["kw-build", str(corpus), str(n), str(index_dir)], timeout_s=600)}
        log(f"  {n:,} chunks — keyword index load + queries")
        row.update(run_worker(["kw-query", str(index_dir), str(n)], timeout_s=600))
        keyword.append(row)
        shutil.rmtree(index_dir, ignore_errors=True)
        work = ctx.work / f"scale-vec-{n}"
        log(f"  {n:,} chunks — embedded vector store")
        vector.append({"chunks": n, **run_worker(["vec", str(corpus), str(n), str(work)], timeout_s=600)})
        vector_1t.append({"chunks": n, **run_worker(["vec", str(corpus), str(n), str(work)], timeout_s=600,
                                                    env={**os.environ, **ONE_THREAD})})
        shutil.rmtree(work, ignore_errors=True)
    return {"sizes": list(ns), "keyword": keyword, "vector": vector, "vector_one_thread": vector_1t,
            "corpus": "synthetic text (~900 chars/chunk, Zipf over the sample corpus' words) + random unit "
                      "vectors (384-d)",
            "notes": ["Keyword query = analyze + BM25 top-5 + decode the stored chunk records (what the "
                      "gateway pays). Vector query = `EmbeddedStore.search` (exact mat-vec; in a worker "
                      "thread above 20k rows), top-5.",
                      "`vector_one_thread` repeats the vector rows with OPENBLAS_NUM_THREADS=1."]}
