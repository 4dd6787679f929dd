"""`rag-sidecar serve --workers 2` as a real process tree on a loopback port: breaker state, KB activation
and SIGTERM reach every worker; /metrics answers for all of them."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.workers import merge_prometheus, parse_workers
from tests.conftest import TINY_CORPUS
from tests.redis_server import free_port

pytestmark = pytest.mark.timeout(120)
ADMIN = {"Authorization": "Bearer adm-token-1234"}


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, env: dict[str, str]) -> None:
        self.proc, self.base, self.env = proc, base, env

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        """One request on a fresh connection, so SO_REUSEPORT may pick any worker."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(self.base + path, **kw) as r:
                return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def per_worker(self, path: str, want: int = 2, timeout_s: float = 10.0) -> dict[int, Any]:
        """GET ``path`` on fresh connections until every worker (by /health's or /readyz's ``worker``) answered."""
        seen: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered {path}"
            try:
                status, body = await self.get(path)
            except aiohttp.ClientConnectionError:  # still starting
                await asyncio.sleep(0.1)
                continue
            if status == 200:
                seen[body["worker"]["index"]] = body
        return seen


async def _until(predicate, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not await predicate():
        assert time.monotonic() - t0 < timeout_s, what
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture
async def served(data_dir: Path, fake_anthropic) -> Any:
    port = free_port()
    env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data_dir), "RAG_SIDECAR__SERVER__PORT": str(port),
           "RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE": "false", "RAG_SIDECAR__LLM__BACKEND": "anthropic",
           "RAG_SIDECAR__LLM__API_KEY": "sk-ant-test-key-0123456789", "RAG_SIDECAR__LLM__BASE_URL": fake_anthropic.url,
           "RAG_SIDECAR__LLM__FALLBACK_MODEL": "null", "RAG_SIDECAR__AUTH__ADMIN_TOKEN": "adm-token-1234",
           "RAG_SIDECAR__CACHE__ENABLED": "false", "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false",
           "RAG_SIDECAR__LOGGING__LEVEL": "WARNING", "RAG_SIDECAR__KB__CHUNK_CHARS": "400",
           "RAG_SIDECAR__KB__CHUNK_OVERLAP": "80"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = Served(proc, f"http://127.0.0.1:{port}", env)
    try:
        await s.per_worker("/readyz", timeout_s=90)
        yield s
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


async def test_a_breaker_opened_in_one_worker_is_seen_by_the_others_within_1s(served):
    async with aiohttp.ClientSession() as http:
        async with http.post(served.base + "/admin/breakers/vector_db/open", headers=ADMIN) as r:
            assert r.status == 200
    t0 = time.monotonic()
    seen = await served.per_worker("/health", timeout_s=5)
    states = {}
    while True:  # every worker reports it open (re-ask each until it does), all within 1 s of the open
        for index, body in seen.items():
            states[index] = body["components"]["vector_db"]["guard"]["state"]
        if set(states.values()) == {"open"}:
            break
        assert time.monotonic() - t0 < 1.0, f"breaker states per worker after 1 s: {states}"
        seen = await served.per_worker("/health", timeout_s=1)
    assert time.monotonic() - t0 < 1.0
    # and a query on any worker now skips the vector store (keyword fallback), labelled
    async with aiohttp.ClientSession() as http:
        async with http.post(served.base + "/v1/query", json={"query": "green tea"}) as r:
            body = await r.json()
    assert r.status == 200 and {"component": "vector_db", "reason": "breaker_open"} in body["degradations"]


async def test_a_kb_activation_reaches_every_worker(served):
    before = await served.per_worker("/readyz")
    old = {b["kb_version"] for b in before.values()}
    assert len(old) == 1
    # a new version from the CLI (unchanged chunks reuse their vectors), activated on disk
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "ingest", str(TINY_CORPUS), "--label", "v-next"],
                         env=served.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    new_version = __import__("json").loads(out.stdout.strip().splitlines()[-1])["version"]
    assert new_version not in old

    async def everywhere() -> bool:
        seen = await served.per_worker("/readyz", timeout_s=5)
        return all(b["kb_version"] == new_version for b in seen.values())

    took = await _until(everywhere, 10.0, "the new KB version did not reach every worker")
    print(f"\nKB activation reached both workers in {took:.2f} s")


async def test_every_worker_serves_a_progressive_version_fast_then_swaps_to_quality(served):
    import fcntl
    import json

    env = {**served.env, "RAG_SIDECAR__KB__PROGRESSIVE_MIN_CHUNKS": "1", "RAG_SIDECAR__KB__CHUNK_CHARS": "200",
           "RAG_SIDECAR__KB__CHUNK_OVERLAP": "0"}  # new chunks: no cached quality vectors, so fast first
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "ingest", str(TINY_CORPUS), "--no-activate"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["vectors"] == "fast"
    version = result["version"]
    lock = Path(env["RAG_SIDECAR__SERVER__DATA_DIR"]) / "kb" / "versions" / version / ".upgrade.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this test holds the upgrade: every worker must serve the fast set meanwhile
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(served.base + "/admin/kb/activate", json={"version": version}, headers=ADMIN) as r:
                assert r.status == 200, await r.text()

        def kb_of(body: dict) -> dict:
            return body["components"]["kb"]

        async def every_worker(serving: str) -> bool:
            seen = await served.per_worker("/health", timeout_s=5)
            return all(kb_of(b)["version"] == version and kb_of(b)["serving_vectors"] == serving for b in seen.values())

        await _until(lambda: every_worker("fast"), 15.0, "a worker does not serve the fast set")

        async def every_worker_waits() -> bool:  # the lock is held elsewhere: nobody upgrades, all serve fast
            seen = await served.per_worker("/health", timeout_s=5)
            return all(kb_of(b)["upgrade"]["state"] == "waiting" and kb_of(b)["serving_vectors"] == "fast"
                       for b in seen.values())

        await _until(every_worker_waits, 15.0, "a worker is not waiting for the lock")
    finally:
        os.close(fd)  # released: one worker takes the lock and upgrades, every worker swaps
    took = await _until(lambda: every_worker("quality"), 60.0, "a worker did not swap to the quality vectors")
    print(f"\nquality vectors reached both workers {took:.2f} s after the lock was released")


async def test_metrics_answer_for_every_worker(served):
    status, text = await served.get("/metrics")
    assert status == 200
    assert 'rag_request_in_flight{worker="0"}' in text and 'rag_request_in_flight{worker="1"}' in text
    assert text.count("# TYPE rag_request_in_flight gauge") == 1  # one family, valid exposition


async def test_sigterm_drains_every_worker(served, fake_anthropic):
    fake_anthropic.set_faults(latency_s=2.0)
    n = 8
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def ask(i: int) -> tuple[int, dict]:
            async with http.post(served.base + "/v1/query", json={"query": f"green tea question {i}"}) as r:
                return r.status, await r.json()

        tasks = [asyncio.create_task(ask(i)) for i in range(n)]
        await asyncio.wait_for(fake_anthropic.wait_for_requests(n), timeout=20)

        async def both_busy() -> bool:  # in-flight per worker (the scrape itself counts 1 on each)
            _, text = await served.get("/metrics")
            busy = [line for line in text.splitlines() if line.startswith("rag_request_in_flight{")]
            return len(busy) == 2 and all(float(line.split()[-1]) >= 2 for line in busy)

        await _until(both_busy, 2.0, "the slow requests did not land on both workers")
        served.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
    assert [s for s, _ in results] == [200] * n
    assert {b["mode"] for _, b in results} == {"full"}
    assert served.proc.wait(timeout=20) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await served.get("/livez")


def test_parse_workers_and_merge():
    assert parse_workers("3") == 3 and parse_workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_workers(bad)
    a = b"# HELP x_total n\n# TYPE x_total counter\nx_total{r=\"a\"} 1.0\n"
    merged = merge_prometheus({0: a, 1: a}).decode()
    assert 'x_total{r="a",worker="0"} 1.0' in merged and 'x_total{r="a",worker="1"} 1.0' in merged
    assert merged.count("# TYPE x_total counter") == 1


async def test_sighup_reloads_every_worker_while_serving(served):
    before = {i: b["worker"]["pid"] for i, b in (await served.per_worker("/readyz")).items()}
    served.proc.send_signal(signal.SIGHUP)
    failures = answered = 0

    async def replaced() -> bool:
        nonlocal failures, answered
        try:
            seen = await served.per_worker("/readyz", timeout_s=5)
        except aiohttp.ClientError:
            failures += 1
            return False
        answered += 1
        return all(seen[i]["worker"]["pid"] != pid for i, pid in before.items())

    took = await _until(replaced, 60.0, "SIGHUP did not replace every worker")
    print(f"\nrolling reload: {took:.1f} s, {answered} probes answered, {failures} failed")
    assert failures == 0
    assert served.proc.poll() is None


async def test_first_run_one_worker_ingests_and_every_worker_serves_it(tmp_path, fake_anthropic):
    port = free_port()
    env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(tmp_path / "fresh"),
           "RAG_SIDECAR__SERVER__PORT": str(port), "RAG_SIDECAR__KB__SAMPLE_CORPUS": str(TINY_CORPUS),
           "RAG_SIDECAR__KB__CHUNK_CHARS": "400", "RAG_SIDECAR__KB__CHUNK_OVERLAP": "80",
           "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false", "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = Served(proc, f"http://127.0.0.1:{port}", env)
    try:
        seen = await s.per_worker("/readyz", timeout_s=90)
        assert len({b["kb_version"] for b in seen.values()}) == 1
        versions = [p.name for p in (tmp_path / "fresh" / "kb" / "versions").iterdir()]
        assert len(versions) == 1, versions  # one first-run ingest, not one per worker
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_each_worker_tags_its_dogstatsd_stream(monkeypatch, tmp_path):
    """One agent, N senders: counts and distributions add up across workers; gauges stay apart by `worker`."""
    from gateway.config import TelemetryConfig
    from gateway.telemetry.statsd import make_statsd
    from gateway.workers import Supervisor

    monkeypatch.setenv("DATADOG_TAGS", "team:rag,worker:stale")
    sup = Supervisor(count=2, host="127.0.0.1", port=0, config=None, grace_s=1.0)
    try:
        env = sup._env(1)
    finally:
        sup.run_dir.rmdir()
    assert env["DATADOG_TAGS"] == "team:rag,worker:1" and env["RAG_SIDECAR_WORKER"] == "1/2"
    assert env["RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE"] == "false" and "RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE" not in sup._env(0)
    monkeypatch.setenv("DATADOG_TAGS", env["DATADOG_TAGS"])
    statsd = make_statsd(TelemetryConfig())
    assert "worker:1" in statsd.constant_tags and "team:rag" in statsd.constant_tags
