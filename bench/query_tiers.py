"""``python -m bench.query_tiers [MODEL...]``: /v1/query req/s at c = 1/4/32 per local embedder, with the
share of degraded answers. A real ``rag-sidecar serve`` on the sample corpus (hybrid retrieval, extractive
answers, no cache hits: every question is unique, so the query-vector LRU never hits), driven by the bench's
own load generator in its own process, 5 s per point. Writes ``bench/results/query_tiers.json``.
Default models: minilm-l6-int8 wordllama-256.
"""
from __future__ import annotations

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

from bench.context import golden_queries
from bench.loadgen import LoadGenerator, LoadSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(model: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "RAG_SIDECAR__SERVER__PORT": str(port),
           "RAG_SIDECAR__SERVER__DATA_DIR": tempfile.mkdtemp(prefix="rag-sidecar-qtiers-"),
           "RAG_SIDECAR__EMBEDDER__LOCAL_MODEL": model, "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false",
           "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # bounded: 5 minutes at most
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    return proc, port


def main() -> None:
    out: dict[str, Any] = {}
    bodies = [{"query": q} for q in golden_queries()]
    with LoadGenerator() as lg:
        for model in sys.argv[1:] or ["minilm-l6-int8", "wordllama-256"]:
            proc, port = _serve(model)
            try:
                for c in (1, 4, 32):
                    r = lg.run(LoadSpec(url=f"http://127.0.0.1:{port}/v1/query", bodies=bodies, concurrency=c,
                                        duration_s=5, warmup_s=1, unique_field="query"))
                    row = {k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "degraded", "requests", "modes")}
                    out[f"{model} c={c}"] = {**row, "load": os.getloadavg()[0]}
                    print(model, c, out[f"{model} c={c}"], flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    out["_meta"] = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count()}
    path = Path(__file__).resolve().parent / "results" / "query_tiers.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
