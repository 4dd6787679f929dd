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
import os
import shutil
import time
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


def _notes(out: dict[str, Any]) -> list[str]:
    sides = [r[k] for r in out["paths"].values() for k in ("floor_passthrough", "workers_1", "workers_2")]
    others = [s["box"]["others_cores"] for s in sides]
    lg = [s["cpu_ms_per_req"].get("loadgen", 0.0) for s in sides]
    up = [s["cpu_ms_per_req"].get("upstream", s["cpu_ms_per_req"].get("standins", 0.0)) for s in sides]
    harness = out.get("harness") or {}
    gen = " + ".join(harness.get("loadgen") or ["python"])
    gen_text = ("wrk (compiled, one thread)" if gen == "wrk" else
                f"{gen} — the Python load generator; install wrk (`make bench-tools`) for a cheaper one")
    return [
        f"Everything runs on the same {out['cores']} cores: the load generator ({gen_text}: "
        f"{min(lg):.3f}–{max(lg):.3f} ms CPU per request), the Anthropic upstream "
        f"({harness.get('upstream', 'stand-in')}: {min(up):.3f}–{max(up):.3f} ms) and the servers under test, "
        "so 2 workers never get 2 whole cores. `ceiling` is the most each side could serve from its measured CPU "
        "per request (server + load generator + upstream; no process above one core) — on all cores, and on what "
        "other work on the machine left; the ratios those ceilings allow are what the targets can reach on this "
        "machine.",
        f"Other work on the machine (not this run) used {min(others):.2f}–{max(others):.2f} cores during the "
        f"slices; 1-min load average {out['load_avg_1m']} at the end. Compare the ratios, not the absolute req/s.",
        "`floor_passthrough` is the minimal aiohttp pass-through (bench/floor.py /v1/messages, one process); "
        "it is the reference for every path, as the issue asks — the query paths do more per request than it "
        "(an answer-cache lookup; BM25 and an LLM call on the keyword path). Every side's Anthropic calls (the "
        "floor's and /v1/messages' pass-through, the keyword path's generation) go to the same upstream.",
    ]


def _admin(port: int, path: str) -> None:
    status, body, _ = http_json("POST", f"http://127.0.0.1:{port}{path}",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"{path} → {status}: {body}")


def _interleave(ctx: Context, sides: dict[str, dict[str, Any]], slices: int) -> dict[str, dict[str, Any]]:
    """Like ``Context.compare`` but each side has its own URL, bodies, headers and unique field; each side
    also gets ``box``: the machine's busy cores during its slices, split into ours and everyone else's."""
    from bench.context import _merge

    per_slice = ctx.duration_s / slices
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    boxes: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(slices):
        for name in (names if i % 2 == 0 else names[::-1]):
            s = sides[name]
            warmup = ctx.warmup_s if i < 2 else min(ctx.warmup_s, 0.2)
            busy0, t0 = _box_busy_s(), time.monotonic()
            point = ctx.point(s["url"], s["bodies"], CONCURRENCY, s["procs"], headers=s.get("headers"),
                              unique_field=s.get("unique"), duration_s=per_slice, warmup_s=warmup, return_raw=True)
            wall = time.monotonic() - t0
            ours = sum(point["cpu_s"].values())
            box = _box_busy_s() - busy0
            boxes[name].append({"wall_s": wall, "box_cpu_s": box, "ours_cpu_s": ours})
            parts[name].append(point)
    out = {}
    for name, ps in parts.items():
        merged = _merge(ps)
        wall = sum(b["wall_s"] for b in boxes[name]) or 1.0
        box = sum(b["box_cpu_s"] for b in boxes[name])
        ours = sum(b["ours_cpu_s"] for b in boxes[name])
        merged["box"] = {"busy_cores": round(box / wall, 2), "ours_cores": round(ours / wall, 2),
                         "others_cores": round(max(0.0, box - ours) / wall, 2)}
        out[name] = merged
    return out


def _box_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all processes, all cores) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def ceiling_rps(cpu_ms: dict[str, float], server_procs: int, cores: float) -> float | None:
    """Most req/s a side could serve with ``cores`` CPUs, from its measured CPU per request.

    Every request costs ``server + loadgen + upstream`` ms of CPU (``upstream``: the Anthropic stand-in
    process, canned or Python; ``standins`` counted the same way) on the same cores; each of those runs
    in its own single-threaded process(es), so none can exceed one core (the servers: ``server_procs``
    cores, shared evenly). An upper bound: perfect scheduling, no waiting.
    """
    upstream = cpu_ms.get("upstream", 0.0) + cpu_ms.get("standins", 0.0)
    server, other = cpu_ms.get("server", 0.0), [cpu_ms.get("loadgen", 0.0), upstream]
    total = server + sum(other)
    if server <= 0 or cores <= 0:
        return None
    limits = [server_procs * 1e3 / server, cores * 1e3 / total] + [1e3 / c for c in other if c > 0]
    return round(min(limits), 1)


def add_ceilings(res: dict[str, dict[str, Any]], cores: int) -> None:
    """``ceiling_rps`` per side on the whole box and on what other work left of it, and the ratios those
    ceilings allow: what the workers targets can reach on this machine with this load generator."""
    procs = {"floor_passthrough": 1, "workers_1": 1, "workers_2": 2}
    for side, n in procs.items():
        r = res[side]
        left = max(0.5, cores - r["box"]["others_cores"])
        r["ceiling_rps"] = {"all_cores": ceiling_rps(r["cpu_ms_per_req"], n, cores),
                            "cores_left_by_others": ceiling_rps(r["cpu_ms_per_req"], n, left)}
    for key in ("all_cores", "cores_left_by_others"):
        f, w1, w2 = (res[s]["ceiling_rps"][key] for s in procs)
        res.setdefault("ceiling_ratios", {})[key] = {
            "2_vs_1": round(w2 / w1, 2) if w1 and w2 else None, "2_vs_floor": round(w2 / f, 2) if f and w2 else None}


def run(ctx: Context) -> dict[str, Any]:
    ctx.standins()  # the floor's retrieval clients connect to it at start; idle here
    upstream, upstream_url = ctx.anthropic()  # every side's Anthropic calls: canned unless RAG_BENCH_UPSTREAM
    floor = ctx.floor("bench")
    template = ctx.sample_kb(ctx.work / "scaleout-template")
    floor_kw = ctx.keyword_floor(template)
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
                         "llm.base_url": upstream_url, "telemetry.statsd_enabled": False}
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
                      "headers": msg_headers, "procs": {"server": floor, "upstream": upstream}}
        slices = SLICES_QUICK if ctx.quick else SLICES

        def side(n: int, path: str, **kw: Any) -> dict[str, Any]:
            return {"url": f"http://127.0.0.1:{trees[n].info['port']}{path}",
                    "procs": {"server": trees[n], "upstream": upstream}, **kw}

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
            if name == "query_keyword":  # and the same path done minimally (BM25 + the same SDK call)
                sides["floor_keyword"] = {"url": f"http://127.0.0.1:{floor_kw.info['port']}/v1/query_keyword",
                                          "procs": {"server": floor_kw, "upstream": upstream}, **p}
            res = _interleave(ctx, sides, slices)
            if "floor_keyword" in res:
                fk = res["floor_keyword"]["rps"]
                res["ratio_2_vs_floor_keyword"] = round(w2 / fk, 3) if (w2 := res["workers_2"]["rps"]) and fk else None
                res["ratio_1_vs_floor_keyword"] = round(res["workers_1"]["rps"] / fk, 3) if fk else None
            f, w1, w2 = res["floor_passthrough"]["rps"], res["workers_1"]["rps"], res["workers_2"]["rps"]
            res["ratio_2_vs_1"] = round(w2 / w1, 3) if w1 else None
            res["ratio_2_vs_floor"] = round(w2 / f, 3) if f else None
            res["ratio_1_vs_floor"] = round(w1 / f, 3) if f else None
            add_ceilings(res, out["cores"] or 2)
            out["paths"][name] = res
        for n in WORKERS:
            out["memory"][f"workers_{n}"] = trees[n].worker_memory()
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
        out["harness"] = {"loadgen": sorted({r[k].get("loadgen", "python") for r in out["paths"].values()
                                             for k in ("floor_passthrough", "workers_1", "workers_2")}),
                          "upstream": ctx.anthropic_label()}
        out["notes"] = _notes(out)
        return out
    finally:
        for tree in trees.values():
            ctx.stop(tree)
