"""Section 1 — gateway overhead: /v1/query and /v1/messages against the Python floor, same run, same stand-ins."""
from __future__ import annotations

import asyncio
from typing import Any

from bench.context import ADMIN_TOKEN, COLLECTION, LLM_KEY, Context, golden_queries
from bench.procs import log
from bench.stats import ratio

CONCURRENCY = (1, 4, 32)
SLICES, SLICES_QUICK = 5, 2  # each side's point is cut into this many alternating slices


def gateway_overrides(ctx: Context, data_dir: str) -> dict[str, Any]:
    """The gateway of section 1: Weaviate + OpenAI-style embedder + Anthropic, all stand-ins; no cache."""
    s = ctx.standins().info
    return {
        "server.data_dir": data_dir, "auth.admin_token": ADMIN_TOKEN,
        "vector_store.backend": "weaviate", "vector_store.weaviate.http_port": s["weaviate_http_port"],
        "vector_store.weaviate.grpc_port": s["weaviate_grpc_port"], "vector_store.weaviate.collection": COLLECTION,
        "embedder.backend": "openai", "embedder.url": s["embeddings_url"],
        "llm.backend": "anthropic", "llm.api_key": LLM_KEY, "llm.base_url": s["anthropic_url"],
        "cache.enabled": False,
    }


def ingest(ctx: Context, overrides: dict[str, Any]) -> None:
    """The public ingest: a KB version on disk + the same chunks upserted into the fake Weaviate."""
    from gateway.config import load_settings
    from gateway.ingest import ingest as ingest_kb

    settings = load_settings(None, env={}, overrides=overrides)
    asyncio.run(ingest_kb(settings, [ctx.sample_corpus], label="bench"))


def _compare(floor: dict, gw: dict) -> dict[str, Any]:
    return {"throughput_ratio": round(ratio(gw["rps"], floor["rps"]) or 0.0, 3),
            "added_p50_ms": round(gw["p50_ms"] - floor["p50_ms"], 3),
            "added_p99_ms": round(gw["p99_ms"] - floor["p99_ms"], 3),
            "added_cpu_ms_per_req": round(gw["cpu_ms_per_req"]["server"] - floor["cpu_ms_per_req"]["server"], 3)}


def run(ctx: Context) -> dict[str, Any]:
    standins = ctx.standins()
    data_dir = ctx.work / "overhead-data"
    overrides = gateway_overrides(ctx, str(data_dir))
    log("section 1: ingesting the sample corpus into the Weaviate stand-in (stand-in embedder)")
    ingest(ctx, overrides)
    floor = ctx.floor()
    gateway = ctx.gateway("gateway-overhead", overrides)
    try:
        gw_url = f"http://127.0.0.1:{gateway.info['port']}"
        floor_url = f"http://127.0.0.1:{floor.info['port']}"
        queries = [{"query": q} for q in golden_queries()]
        messages = [{"model": "claude-sonnet-4-6", "max_tokens": 64,
                     "messages": [{"role": "user", "content": q}]} for q in golden_queries()]
        msg_headers = {"x-api-key": LLM_KEY, "anthropic-version": "2023-06-01"}
        out: dict[str, Any] = {"query": [], "messages": []}
        slices = SLICES_QUICK if ctx.quick else SLICES
        for endpoint, bodies, headers in (("query", queries, {}), ("messages", messages, msg_headers)):
            for c in CONCURRENCY:
                log(f"  /v1/{endpoint} c={c}: floor and gateway, {slices} interleaved slices each")
                sides = {"floor": (f"{floor_url}/v1/{endpoint}", {"server": floor, "standins": standins}),
                         "gateway": (f"{gw_url}/v1/{endpoint}", {"server": gateway, "standins": standins})}
                row: dict[str, Any] = {"concurrency": c,
                                       **ctx.compare(sides, bodies, c, slices=slices, headers=headers)}
                row.update(_compare(row["floor"], row["gateway"]))
                out[endpoint].append(row)
        out["slices"] = slices
        out["notes"] = [
            f"Each point: {ctx.duration_s:g} s per side, cut into {slices} slices that alternate floor/gateway "
            "(so load from outside the run hits both alike), pooled per side.",
            "Stand-ins (embeddings, Weaviate gRPC, Anthropic) answer at once, in one process; the load "
            "generator, the server under test and the stand-ins share the same cores.",
            "Gateway runs its defaults (JSON access log at INFO to a file, DogStatsD with no agent, Prometheus) "
            "with the answer cache off; the floor has no logging, validation, guards or metrics.",
        ]
        return out
    finally:
        ctx.stop(gateway)
