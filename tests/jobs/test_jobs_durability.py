"""A real `rag-sidecar serve` process killed with SIGKILL mid-batch and started again on the same data
dir: every query of the batch ends up in the results exactly once."""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys

import aiohttp
import pytest

N = 150


async def _ready(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen) -> None:
    for _ in range(600):  # bounded: the process listens, then loads its KB
        assert proc.poll() is None, "rag-sidecar serve exited"
        try:
            async with http.get(base + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail("rag-sidecar serve did not become ready")


async def test_kill_9_mid_batch_then_restart_completes_every_query_exactly_once(data_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data_dir), "RAG_SIDECAR__SERVER__PORT": str(port),
           "RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE": "false", "RAG_SIDECAR__JOBS__CONCURRENCY": "2",
           "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false", "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    base = f"http://127.0.0.1:{port}"
    queries = [{"query": f"green tea steeping time and temperature #{i}", "top_k": 2} for i in range(N)]

    def serve() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = serve()
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, base, proc)
            async with http.post(base + "/v1/jobs", json={"queries": queries}) as r:
                assert r.status == 202
                job_id = (await r.json())["id"]
            for _ in range(2000):  # until some, not all, queries are done
                async with http.get(f"{base}/v1/jobs/{job_id}?limit=0") as r:
                    done_before = (await r.json())["progress"]["done"]
                if done_before >= 15:
                    break
                await asyncio.sleep(0.01)
            proc.kill()  # SIGKILL: no shutdown hook runs
            proc.wait(timeout=10)
            assert 15 <= done_before < N, "the batch must be killed mid-way for this test to mean anything"
            with sqlite3.connect(data_dir / "jobs" / "jobs.sqlite3") as db:
                running_at_kill = db.execute("SELECT COUNT(*) FROM items WHERE status='running'").fetchone()[0]
            proc = serve()
            await _ready(http, base, proc)
            async with asyncio.timeout(120):
                while True:
                    async with http.get(f"{base}/v1/jobs/{job_id}?limit=1000") as r:
                        body = await r.json()
                    if body["status"] == "completed":
                        break
                    await asyncio.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert body["progress"] == {"total": N, "done": N, "failed": 0, "cancelled": 0, "pending": 0}
    results = body["results"]
    assert [r["index"] for r in results] == list(range(N))  # each index once, none missing
    assert all(r["result"]["request_id"] == f"job-{job_id}-{r['index']}" for r in results)
    assert all(r["result"]["sources"][0]["source"] == "tea.md" for r in results)
    # Queries in flight at the kill ran again (a second attempt), yet appear once.
    rerun = [r for r in results if r["attempts"] > 1]
    assert len(rerun) == running_at_kill, (len(rerun), running_at_kill)
