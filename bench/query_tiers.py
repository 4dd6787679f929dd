"""``python -m bench.query_tiers [MODEL...]``: /v1/query req/s at c = 1/4/32 per local embedder, with the
share of degraded answers. A real ``rag-sidecar serve`` on the sample corpus (hybrid retrieval, extractive
answers, no cache hits: every question is unique, so the query-vector LRU never hits), driven by the bench's
own load generator in its own process, 5 s per point. Writes ``bench/results/query_tiers.json``.
Default models: minilm-l6-int8 wordllama-256.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.loadgen import LoadGenerator, LoadSpec
from bench.context import golden_queries

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model):
    port = free_port()
    data = tempfile.mkdtemp(prefix="retr-qps-")
    env = {**os.environ, "RAG_SIDECAR__SERVER__PORT": str(port), "RAG_SIDECAR__SERVER__DATA_DIR": data,
           "RAG_SIDECAR__EMBEDDER__LOCAL_MODEL": model, "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false",
           "RAG_SIDECAR__LOGGING__LEVEL": "WARNING", "RAG_SIDECAR__RATE_LIMIT__ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                break
        except Exception:  # noqa: BLE001 - not up yet: poll again
            time.sleep(0.5)
    return proc, port


def main():
    out = {}
    bodies = [{"query": q} for q in golden_queries()]
    with LoadGenerator() as lg:
        for model in sys.argv[1:] or ["minilm-l6-int8", "wordllama-256"]:
            proc, port = serve(model)
            try:
                for c in (1, 4, 32):
                    r = lg.run(LoadSpec(url=f"http://127.0.0.1:{port}/v1/query", bodies=bodies, concurrency=c,
                                        duration_s=5, warmup_s=1, unique_field="query"))
                    out[f"{model} c={c}"] = {"rps": r.get("rps"), "p50_ms": r.get("p50_ms"), "p99_ms": r.get("p99_ms"),
                                             "degraded": r.get("degraded"), "requests": r.get("requests"),
                                             "modes": r.get("modes"), "load": os.getloadavg()[0]}
                    print(model, c, out[f"{model} c={c}"], flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    out["_meta"] = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count()}
    path = Path(__file__).resolve().parent / "results" / "query_tiers.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")

if __name__ == '__main__':
    main()
