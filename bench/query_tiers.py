"""``python -m bench.query_tiers [MODEL...] [--workers 1 2] [--duration S]``: /v1/query req/s at c = 1/4/32 per
local embedder, with the share of degraded answers and the serve process's CPU per request.

A real ``rag-sidecar serve`` (``--workers N``: its supervisor and workers) on the sample corpus (hybrid
retrieval, extractive answers, no cache hits: every question is unique, so the query-vector LRU never
hits), driven by the bench's own load generator in its own process. ``undegraded_rps`` is req/s times the
share of answers not degraded (the issue's target: >= 300 at c = 32 on 2 cores). ``cpu_ms_per_req`` is the
CPU time (user + system) of the serve process tree over the point, warm-up included, per request answered:
far less sensitive to other load on the box than req/s; ``loop_cpu_ms_per_req`` is the part spent on the
event loops' threads (one core per process at most; the embedder's threads use the others).
Writes ``bench/results/query_tiers.json``.
Default models: minilm-l6-int8 wordllama-256; default workers: 1 and 2.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.context import golden_queries
from bench.loadgen import LoadGenerator, LoadSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(model: str, workers: int, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "RAG_SIDECAR__SERVER__PORT": str(port),
           "RAG_SIDECAR__SERVER__DATA_DIR": tempfile.mkdtemp(prefix="rag-sidecar-qtiers-"),
           "RAG_SIDECAR__EMBEDDER__LOCAL_MODEL": model, "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false",
           "RAG_SIDECAR__LOGGING__LEVEL": "WARNING", **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # bounded: 5 minutes at most
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    if workers > 1:  # every worker ready (each loads its KB and warms its embedder)
        for _ in range(600):
            if len(psutil.Process(proc.pid).children()) >= workers:
                break
            time.sleep(0.5)
        time.sleep(5.0 if model.startswith("minilm") else 2.0)
    return proc, port


def _cpu_s(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of ``pid`` and its live children, and of their main threads alone (the
    event loops: what one process cannot spread over cores)."""
    root = psutil.Process(pid)
    total = loops = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
            loops += sum(th.user_time + th.system_time for th in p.threads() if th.id == p.pid)
        except psutil.NoSuchProcess:
            pass
    return total, loops


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.query_tiers", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["minilm-l6-int8", "wordllama-256"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="serve --workers values")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for serve (e.g. RAG_SIDECAR__EMBEDDER__QUERY_BATCH_MAX=1)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "query_tiers.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    out: dict[str, Any] = {}
    questions = golden_queries()
    point = 0
    with LoadGenerator() as lg:
        for model in args.models:
            for workers in args.workers:
                proc, port = _serve(model, workers, extra_env)
                try:
                    for c in args.concurrency:
                        point += 1  # unique across points too: a later point must not hit an earlier one's LRU
                        bodies = [{"query": f"{q} ({point})"} for q in questions]
                        cpu0 = _cpu_s(proc.pid)
                        r = lg.run(LoadSpec(url=f"http://127.0.0.1:{port}/v1/query", bodies=bodies, concurrency=c,
                                            duration_s=args.duration, warmup_s=1, unique_field="query"))
                        cpu1 = _cpu_s(proc.pid)
                        cpu, loop_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
                        answered = (r.get("requests") or 0) + (r.get("warmup_requests") or 0)
                        row = {k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "degraded", "requests", "modes")}
                        share = (row["degraded"] or 0) / max(1, row["requests"] or 0)
                        row.update(degraded_share=round(share, 3), undegraded_rps=round((row["rps"] or 0) * (1 - share), 1),
                                   cpu_ms_per_req=round(cpu * 1e3 / max(1, answered), 2),
                                   loop_cpu_ms_per_req=round(loop_cpu * 1e3 / max(1, answered), 2),
                                   load=round(os.getloadavg()[0], 1))
                        key = f"{model} workers={workers} c={c}"
                        out[key] = row
                        print(key, json.dumps(row), flush=True)
                finally:
                    proc.terminate()
                    proc.wait(20)
    out["_meta"] = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count(),
                    "env": extra_env}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
