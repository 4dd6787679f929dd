"""Section 6 — scale-out: ``serve --workers 1`` and ``--workers 2`` against the single-process Python
pass-through (the floor's ``/v1/messages``), in the same run, at c = 32.

Paths: ``/v1/messages`` (proxy to the Anthropic stand-in), ``/v1/query`` cached (fresh hits of 10 queries
answered once beforehand) and ``/v1/query`` keyword (vector_db breaker held open — opened through one
worker's admin API, so the other learns it through the breaker hub — every query new, answered by the LLM
stand-in). Each side runs the real CLI (``bench.serve_proc``); the sides' slices alternate so load from
outside the run hits them alike. Memory: RSS and PSS of every worker (``/proc/PID/smaps_rollup``): PSS
splits shared pages (the memory-mapped KB, libraries) between the processes that map them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psutil

from bench.context import ADMIN_TOKEN, LLM_KEY, Context, golden_queries, warm
from bench.procs import ServerProcess, http_json, log

CONCURRENCY = 32
CACHED_QUERIES = 10
SLICES, SLICES_QUICK = 4, 2
WORKERS = (1, 2)


class ServeTree(ServerProcess):
    """A ``bench.serve_proc`` child; CPU and memory summed over the whole process tree."""

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def worker_memory(self) -> list[dict[str, Any]]:
        out = []
        for pid in self.info.get("pids", []):
            row: dict[str, Any] = {"pid": pid}
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("Rss", "Pss", "Shared_Clean", "Private_Dirty", "Pss_Anon", "Pss_File"):
                        row[key.lower() + "_mb"] = round(int(value.split()[0]) / 1024, 1)
            except (OSError, ValueError):
                continue
            out.append(row)
        return out


def _admin(port: int, path: str) -> None:
    status, body, _ = http_json("POST", f"http://127.0.0.1:{port}{path}",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"{path} → {status}: {body}")


def _interleave(ctx: Context, sides: dict[str, dict[str, Any]], slices: int) -> dict[str, dict[str, Any]]:
    """Like ``Context.compare`` but each side has its own URL, bodies, headers and unique field."""
    from bench.context import _merge

    per_slice = ctx.duration_s / slices
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(slices):
        for name in (names if i % 2 == 0 else names[::-1]):
            s = sides[name]
            warmup = ctx.warmup_s if i < 2 else min(ctx.warmup_s, 0.2)
            parts[name].append(ctx.point(s["url"], s["bodies"], CONCURRENCY, s["procs"], headers=s.get("headers"),
                                         unique_field=s.get("unique"), duration_s=per_slice, warmup_s=warmup,
                                         return_raw=True))
    return {name: _merge(ps) for name, ps in parts.items()}


def run(ctx: Context) -> dict[str, Any]:
    standins = ctx.standins()
    floor = ctx.floor()
    template = ctx.sample_kb(ctx.work / "scaleout-template")
    queries = [{"query": q} for q in golden_queries()]
    messages = [{"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": q}]}
                for q in golden_queries()]
    msg_headers = {"x-api-key": LLM_KEY, "anthropic-version": "2023-06-01"}
    trees: dict[int, ServeTree] = {}
    out: dict[str, Any] = {"concurrency": CONCURRENCY, "cores": len(psutil.Process().cpu_affinity() or []),
                           "paths": {}, "memory": {}}
    try:
        for n in WORKERS:
            data_dir = ctx.work / f"scaleout-w{n}"
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.copytree(template, data_dir)
            overrides = {"server.data_dir": str(data_dir), "kb.sample_corpus": str(ctx.sample_corpus),
                         "auth.admin_token": ADMIN_TOKEN, "llm.backend": "anthropic", "llm.api_key": LLM_KEY,
                         "llm.base_url": standins.info["anthropic_url"], "telemetry.statsd_enabled": False}
            log(f"section 6: starting `rag-sidecar serve --workers {n}`")
            tree = ServeTree(f"serve-w{n}", "bench.serve_proc",
                             ["--workers", str(n), "--overrides", json.dumps(overrides)], ctx.logs,
                             ready_timeout_s=400)
            ctx._children.append(tree)
            trees[n] = tree
            base = f"http://127.0.0.1:{tree.info['port']}"
            warm(base + "/v1/query", queries)
            for body in queries[:CACHED_QUERIES]:  # fill the (shared, on-disk) answer cache
                status, resp, _ = http_json("POST", base + "/v1/query", body, timeout_s=60)
                if status != 200:
                    raise RuntimeError(f"cache warm-up failed: {status} {resp}")
        floor_side = {"url": f"http://127.0.0.1:{floor.info['port']}/v1/messages", "bodies": messages,
                      "headers": msg_headers, "procs": {"server": floor, "standins": standins}}
        slices = SLICES_QUICK if ctx.quick else SLICES

        def side(n: int, path: str, **kw: Any) -> dict[str, Any]:
            return {"url": f"http://127.0.0.1:{trees[n].info['port']}{path}",
                    "procs": {"server": trees[n], "standins": standins}, **kw}

        plan = {
            "messages": dict(path="/v1/messages", bodies=messages, headers=msg_headers),
            "query_cached": dict(path="/v1/query", bodies=queries[:CACHED_QUERIES]),
            "query_keyword": dict(path="/v1/query", bodies=queries, unique="query"),
        }
        for name, p in plan.items():
            if name == "query_keyword":
                for n in WORKERS:  # through one worker; the hub opens it in the others
                    _admin(trees[n].info["port"], "/admin/breakers/vector_db/open")
            log(f"  {name} c={CONCURRENCY}: pass-through floor, workers={WORKERS}, {slices} interleaved slices each")
            path = p.pop("path")
            sides = {"floor_passthrough": floor_side, **{f"workers_{n}": side(n, path, **p) for n in WORKERS}}
            res = _interleave(ctx, sides, slices)
            f, w1, w2 = res["floor_passthrough"]["rps"], res["workers_1"]["rps"], res["workers_2"]["rps"]
            res["ratio_2_vs_1"] = round(w2 / w1, 3) if w1 else None
            res["ratio_2_vs_floor"] = round(w2 / f, 3) if f else None
            res["ratio_1_vs_floor"] = round(w1 / f, 3) if f else None
            out["paths"][name] = res
        for n in WORKERS:
            out["memory"][f"workers_{n}"] = trees[n].worker_memory()
        out["notes"] = [
            "The load generator (one Python process), the stand-ins and the servers share the same cores: "
            "on 2 cores the servers under test never get 2 whole cores.",
            "The machine was shared with other engineers' work during the run: compare the ratios, not the "
            "absolute req/s.",
            "`floor_passthrough` is the minimal aiohttp pass-through (bench/floor.py /v1/messages, one process); "
            "it is the reference for every path, as the issue asks.",
        ]
        return out
    finally:
        for tree in trees.values():
            ctx.stop(tree)
