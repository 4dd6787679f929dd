"""Section 3 — what the resilience machinery itself costs a request.

- **Breaker-open fast fail**: the pipeline's retrieve with the vector DB breaker forced open (it steps
  down to BM25) against a direct ``KeywordIndex.search`` on the same index, in one process, interleaved.
- **Rate-limit rejection**: the 429 path through the gateway's middleware chain against a minimal
  aiohttp handler that answers 429 at once (the floor), at c=4.
- **Metrics emission**: ``bench.metrics_overhead`` (owned separately), run as a subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.context import ROOT, Context, golden_queries, run_worker
from bench.procs import log

CONCURRENCY = 4


def fast_fail(ctx: Context) -> dict[str, Any]:
    data_dir = ctx.sample_kb(ctx.work / "costs-data")
    rounds, n_queries = (1, 15) if ctx.quick else (2, 87)
    log(f"section 3: breaker-open fast fail vs direct BM25 ({rounds} interleaved rounds × {n_queries} queries, "
        "in-process)")
    out = run_worker(["fastfail", str(data_dir), str(rounds), str(n_queries)], timeout_s=600)
    v = out["variants"]
    direct = v["direct_bm25"]
    for name in ("vector_db_open", "embedder_open"):
        v[name]["added_p50_ms"] = round(v[name]["p50_ms"] - direct["p50_ms"], 3)
        v[name]["added_p99_ms"] = round(v[name]["p99_ms"] - direct["p99_ms"], 3)
    return out


def rate_limit(ctx: Context) -> dict[str, Any]:
    data_dir = ctx.sample_kb(ctx.work / "ratelimit-data")
    gw = ctx.gateway("gateway-ratelimit", {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus),
                                           "rate_limit.enabled": True, "rate_limit.rate_per_s": 0.001,
                                           "rate_limit.burst": 1})
    floor = ctx.floor()
    body = [{"query": q} for q in golden_queries()]
    headers = {"X-Client-Id": "bench-client"}
    try:
        log("  rate-limit rejection (429) through the gateway vs a bare aiohttp 429")
        gateway = ctx.point(f"http://127.0.0.1:{gw.info['port']}/v1/query", body, CONCURRENCY, {"server": gw},
                            headers=headers)
        bare = ctx.point(f"http://127.0.0.1:{floor.info['port']}/reject", body, CONCURRENCY, {"server": floor},
                         headers=headers)
    finally:
        ctx.stop(gw)
    return {"concurrency": CONCURRENCY, "gateway": gateway, "floor": bare,
            "added_p50_ms": round(gateway["p50_ms"] - bare["p50_ms"], 3),
            "added_p99_ms": round(gateway["p99_ms"] - bare["p99_ms"], 3),
            "added_cpu_ms_per_req": round(gateway["cpu_ms_per_req"]["server"] - bare["cpu_ms_per_req"]["server"], 3)}


def metrics(ctx: Context) -> dict[str, Any]:
    module = ROOT / "bench" / "metrics_overhead.py"
    if not module.exists():
        return {"available": False, "note": "bench/metrics_overhead.py is not present"}
    args = ["--rounds", "2000", "--requests", "200", "--no-write"] if ctx.quick else []
    log("  metrics emission cost (python -m bench.metrics_overhead)")
    res = subprocess.run([sys.executable, "-m", "bench.metrics_overhead", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    out: dict[str, Any] = {"available": True, "returncode": res.returncode, "stdout": res.stdout.strip(),
                           "args": args}
    if res.returncode != 0:
        out["stderr"] = res.stderr[-2000:]
        return out
    written = ROOT / "bench" / "results" / "metrics_overhead.json"
    if not ctx.quick and written.exists():
        try:
            out["result"] = json.loads(written.read_text())
        except ValueError:
            pass
    return out


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in (("fast_fail", fast_fail), ("rate_limit", rate_limit), ("metrics", metrics)):
        try:
            out[name] = fn(ctx)
        except Exception as exc:
            log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
