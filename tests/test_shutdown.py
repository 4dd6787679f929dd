"""Graceful shutdown of a real `rag-sidecar serve` process: the listener closes at once, in-flight requests
get exactly `server.shutdown_grace_s`, and the ones still running then are answered, logged and counted as
503 (the server's doing), not 499 (a client that went away)."""
from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.serve_proc import ServeProcess
from tests.test_resilience_gateway import ObservedAnthropic

GRACE_S = 1.5


@pytest.fixture
async def llm():
    server = ObservedAnthropic()
    await server.start()
    yield server
    await server.stop()


def llm_env(server: ObservedAnthropic, **extra: str) -> dict[str, str]:
    return {"RAG_SIDECAR__LLM__BACKEND": "anthropic", "RAG_SIDECAR__LLM__API_KEY": "sk-ant-test-key-0123456789",
            "RAG_SIDECAR__LLM__BASE_URL": server.url, "RAG_SIDECAR__LLM__FALLBACK_MODEL": "null",
            "RAG_SIDECAR__CACHE__ENABLED": "false", **extra}


async def test_requests_still_running_at_the_end_of_the_grace_are_cut_as_503(data_dir, tmp_path, llm):
    gw = await ServeProcess(data_dir, tmp_path / "serve.log", RAG_SIDECAR__LOGGING__LEVEL="INFO",
                            RAG_SIDECAR__SERVER__SHUTDOWN_GRACE_S=str(GRACE_S),
                            RAG_SIDECAR__RESILIENCE__LLM__TIMEOUT_S="30",
                            RAG_SIDECAR__SERVER__REQUEST_TIMEOUT_S="30", **llm_env(llm)).start()
    try:
        llm.set_faults(hang=True)
        async with aiohttp.ClientSession() as http:
            async def in_flight() -> tuple[int, dict, float]:
                async with http.post(gw.url + "/v1/query", json={"query": "green tea"},
                                     timeout=aiohttp.ClientTimeout(total=20)) as r:
                    return r.status, await r.json(), time.monotonic()

            task = asyncio.create_task(in_flight())
            for _ in range(200):  # bounded: the request reaches the (hung) LLM
                if llm.arrivals:
                    break
                await asyncio.sleep(0.02)
            assert llm.arrivals, "the query never reached the LLM"
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            for _ in range(200):  # bounded: the process has seen the signal
                if any(e.get("event") == "shutdown_started" for e in gw.logs()):
                    break
                await asyncio.sleep(0.01)
            draining_after = time.monotonic() - t0
            with pytest.raises(ConnectionRefusedError):  # a new connection, not the pooled one
                await asyncio.open_connection("127.0.0.1", gw.port)
            status, body, done = await task
        cut_after = done - t0
        assert gw.wait(timeout=15) == 0
    finally:
        gw.stop()
    assert draining_after < 0.5, draining_after  # stopped accepting at once
    assert status == 503 and body["error"]["type"] == "shutting_down", body
    assert GRACE_S - 0.05 <= cut_after <= GRACE_S + 0.5, f"cut {cut_after:.3f}s after SIGTERM, grace {GRACE_S}s"
    logs = gw.logs()
    lines = [e for e in logs if e.get("event") == "request" and e.get("route") == "/v1/query"]
    assert [e["status"] for e in lines] == [503]
    cut = [e for e in logs if e.get("event") == "shutdown_cut"]
    assert cut and cut[0]["cut"] == 1
    print(f"\nshutdown: refusing connections {draining_after * 1e3:.0f} ms after SIGTERM, in-flight request cut with 503 "
          f"{cut_after:.3f}s after SIGTERM (grace {GRACE_S}s)")


async def test_shutdown_does_not_wait_the_grace_when_nothing_is_in_flight(data_dir, tmp_path):
    gw = await ServeProcess(data_dir, tmp_path / "serve.log", RAG_SIDECAR__SERVER__SHUTDOWN_GRACE_S="30").start()
    try:
        async with aiohttp.ClientSession() as http:  # a kept-alive idle connection must not hold it up
            async with http.post(gw.url + "/v1/query", json={"query": "green tea"}) as r:
                assert r.status == 200
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert gw.wait(timeout=15) == 0
            assert time.monotonic() - t0 < 5
    finally:
        gw.stop()
