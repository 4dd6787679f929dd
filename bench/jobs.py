"""Section 7 — does a running batch job hurt interactive users?

One gateway on embedded defaults (the local embedder, the embedded store, extractive answers over
the sample corpus, as ``make serve`` runs). The same closed-loop interactive /v1/query load is
measured in interleaved slices (A B B A …): A alone, B while a large batch job is running in the same
gateway (submitted just before the slice, cancelled just after it, so A slices stay clean). The target
is B's p99 ≤ 1.2 × A's p99; the batch's throughput during B slices is reported beside it, because
"no effect on interactive users" is trivial if the batch does not move.
"""
from __future__ import annotations

import time
from typing import Any

from bench.context import Context, golden_queries, warm
from bench.procs import http_json, log

INTERACTIVE_CONCURRENCY = 2
BATCH = 4000


def _wait_idle(base: str, job_id: str, timeout_s: float = 30.0) -> None:
    """After a cancel: wait until the gateway runs nothing of the job (queue in flight drained)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status, body, _ = http_json("GET", f"{base}/metrics")
        text = body if isinstance(body, str) else ""
        if status == 200 and "rag_jobs_queue_in_flight 0.0" in text:
            return
        time.sleep(0.2)


def run(ctx: Context) -> dict[str, Any]:
    data_dir = ctx.sample_kb(ctx.work / "jobs-data")
    base_cfg = {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus)}
    gw = ctx.gateway("gateway-jobs", base_cfg)
    base = f"http://127.0.0.1:{gw.info['port']}"
    url = base + "/v1/query"
    queries = [{"query": q} for q in golden_queries()]
    slices = 2 if ctx.quick else 6
    per_slice = ctx.duration_s * 2 / slices
    parts: dict[str, list[dict[str, Any]]] = {"alone": [], "with_batch": []}
    batch_rates: list[float] = []
    try:
        warm(url, queries)
        log(f"section 7: interactive /v1/query at c={INTERACTIVE_CONCURRENCY}, alone vs beside a running batch "
            f"({slices} interleaved slices per side)")
        for i in range(slices):
            for side in (("alone", "with_batch") if i % 2 == 0 else ("with_batch", "alone")):
                job_id = None
                if side == "with_batch":
                    batch = [{"query": f"{queries[n % len(queries)]['query']} (batch {i}.{n})"} for n in range(BATCH)]
                    status, body, _ = http_json("POST", base + "/v1/jobs", {"queries": batch}, timeout_s=60)
                    if status != 202:
                        raise RuntimeError(f"batch submit failed: {status} {body}")
                    job_id = body["id"]
                    time.sleep(0.3)  # the worker has claimed its first queries
                t0 = time.monotonic()
                parts[side].append(ctx.point(url, queries, INTERACTIVE_CONCURRENCY, {"server": gw},
                                             duration_s=per_slice, warmup_s=min(ctx.warmup_s, 0.3),
                                             return_raw=True))
                if job_id is not None:
                    _, body, _ = http_json("DELETE", f"{base}/v1/jobs/{job_id}")
                    finished = body["progress"]["done"] + body["progress"]["failed"]
                    batch_rates.append(finished / max(time.monotonic() - t0 + 0.3, 1e-6))
                    _wait_idle(base, job_id)
        log("  batch alone (no interactive load): its throughput when the gateway is quiet")
        batch = [{"query": f"{queries[n % len(queries)]['query']} (alone {n})"} for n in range(BATCH)]
        _, body, _ = http_json("POST", base + "/v1/jobs", {"queries": batch}, timeout_s=60)
        t0 = time.monotonic()
        time.sleep(per_slice)
        _, end, _ = http_json("DELETE", f"{base}/v1/jobs/{body['id']}")
        alone_rate = (end["progress"]["done"] + end["progress"]["failed"]) / (time.monotonic() - t0)
    finally:
        ctx.stop(gw)
    from bench.context import _merge

    alone, beside = _merge(parts["alone"]), _merge(parts["with_batch"])
    ratio = beside["p99_ms"] / alone["p99_ms"] if alone.get("p99_ms") else None
    return {"interactive_concurrency": INTERACTIVE_CONCURRENCY, "slices_per_side": slices, "batch_size": BATCH,
            "alone": alone, "with_batch": beside, "p99_ratio": round(ratio, 3) if ratio else None,
            "p50_ratio": round(beside["p50_ms"] / alone["p50_ms"], 3) if alone.get("p50_ms") else None,
            "batch_queries_per_s": round(sum(batch_rates) / len(batch_rates), 1) if batch_rates else None,
            "batch_alone_queries_per_s": round(alone_rate, 1),
            "notes": ["Jobs run at background priority: jobs.concurrency (default 2) queries at once, each "
                      "dependency's bulkhead gives them at most background_share of its slots and serves "
                      "waiting interactive calls first; and a job query starts only while no interactive "
                      "request is in flight (jobs.yield_to_interactive), or after waiting jobs.yield_max_wait_s "
                      "(aging: under constant interactive load the batch still moves, slowly).",
                      "The machine is shared (other engineers' tests and benches run alongside): the slices "
                      "are interleaved so outside load hits both sides alike; read the per-slice p99s too."]}
