"""Issue 3's acceptance at the gateway: every fault is injected through the stand-ins (Weaviate over
gRPC, Anthropic and embeddings over HTTP) and observed from both sides — the response contract the
client gets, and the calls that did (or did not) reach the stand-in.

Breaker timing runs on a :class:`~tests.conftest.JumpClock` (real time that can be jumped ahead), so
an open interval of 30 s is skipped, not slept, while attempt durations stay real.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
import pytest
from aiohttp import web

from chaos.stubs.anthropic import FakeAnthropic
from chaos.stubs.httpfaults import json_body
from gateway.config import load_settings
from resilience import Guard
from tests.conftest import JumpClock, ingest_into, make_settings, stack_overrides, state_of

pytestmark = pytest.mark.timeout(30)

QUERY = "green tea steeping time and water temperature"
PRIMARY, FALLBACK = "claude-sonnet-4-6", "claude-haiku-4-5"


class ObservedAnthropic(FakeAnthropic):
    """The Anthropic stand-in, also noting when each /v1/messages request arrives (per model) and how
    many were abandoned by the client (the connection dropped, so aiohttp cancelled the handler)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[str | None, float]] = []
        self.cancelled = 0
        self._cancel_seen = asyncio.Event()

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.insert(0, self._observe)  # outermost: also sees an injected hang being cancelled
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/messages":
            body = await json_body(request)
            self.arrivals.append((body.get("model") if isinstance(body, dict) else None, time.monotonic()))
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            self._cancel_seen.set()
            raise

    async def wait_cancelled(self, n: int) -> None:
        while self.cancelled < n:
            self._cancel_seen.clear()
            await self._cancel_seen.wait()

    def arrival_times(self, model: str) -> list[float]:
        return [t for m, t in self.arrivals if m == model]


@pytest.fixture
async def anthropic() -> Any:
    server = ObservedAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def start_gateway(tmp_path, gateway_factory, fake_weaviate, anthropic, fake_embeddings, clock):
    """``await start_gateway(**overrides)`` → a gateway on ``clock`` in front of the three stand-ins."""

    async def start(**overrides: Any):
        settings = make_settings(tmp_path / "data",
                                 **stack_overrides(fake_weaviate, anthropic, fake_embeddings, **overrides))
        await ingest_into(settings)
        return await gateway_factory(settings, clock)

    return start


async def ask(client, query: str = QUERY, **kwargs: Any) -> tuple[aiohttp.ClientResponse, dict[str, Any], float]:
    """POST /v1/query; returns (response, JSON body, seconds as the client saw them)."""
    t0 = time.perf_counter()
    resp = await client.post("/v1/query", json={"query": query}, **kwargs)
    body = await resp.json()
    return resp, body, time.perf_counter() - t0


def guard(client, name: str) -> Guard:
    """A dependency's guard; ``llm`` / ``llm_fallback`` name the primary / fallback model's own guard."""
    state = state_of(client)
    model = {"llm": PRIMARY, "llm_fallback": FALLBACK}.get(name)
    return state.llm_router.target(model).guard if model else state.guards[name]


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait (bounded) for bookkeeping that completes as a cancellation unwinds."""
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def assert_short_circuited(body: dict[str, Any]) -> None:
    assert body["mode"] == "keyword_fallback" and body["degraded"] is True
    assert body["degradations"][0] == {"component": "vector_db", "reason": "breaker_open"}
    assert body["sources"] and {s["retriever"] for s in body["sources"]} == {"bm25"}
    assert body["sources"][0]["source"] == "tea.md"


# ---- circuit breaker --------------------------------------------------------------------------
async def test_breaker_opens_after_threshold_then_no_upstream_attempt_until_the_interval_ends(
        start_gateway, fake_weaviate, clock):
    timeout_s, threshold, open_s = 0.3, 3, 30.0
    client = await start_gateway(**{"resilience.vector_db.timeout_s": timeout_s,
                                    "resilience.vector_db.breaker.failure_threshold": threshold,
                                    "resilience.vector_db.breaker.open_s": open_s})
    vdb = guard(client, "vector_db")
    opened: list[float] = []
    vdb.breaker.add_listener(lambda _name, _old, new: opened.append(time.monotonic()) if new == "open" else None)

    fake_weaviate.set_faults(hang=True)
    t0 = time.monotonic()
    requests = 0
    while vdb.breaker.state != "open":
        assert requests < threshold, "breaker still closed after `threshold` failing requests"
        _, body, _ = await ask(client)
        requests += 1
        assert body["mode"] == "keyword_fallback"
        assert body["degradations"][0] == {"component": "vector_db", "reason": "timeout"}
    time_to_open = opened[0] - t0
    assert time_to_open <= threshold * timeout_s + 0.3, f"opened after {time_to_open:.3f}s"
    assert fake_weaviate.search_calls == threshold  # the retry of request 1 counted too; request 2 did not retry
    assert vdb.breaker.snapshot()["totals"]["failures"] == threshold

    # Open: every request short-circuits to the keyword index; nothing reaches the stand-in.
    calls, attempts = fake_weaviate.search_calls, vdb.stats["attempts"]
    results = await asyncio.gather(*(ask(client) for _ in range(10)))
    for resp, body, _ in results:
        assert resp.status == 200 and resp.headers["X-RAG-Mode"] == "keyword_fallback"
        assert_short_circuited(body)
        assert body["timings_ms"]["vector_search"] < timeout_s * 1000  # never waits on the hung upstream
    clock.advance(open_s - 1.0)
    fake_weaviate.clear_faults()  # the upstream has recovered, but the breaker is what keeps calls away
    assert_short_circuited((await ask(client))[1])
    assert fake_weaviate.search_calls == calls and vdb.stats["attempts"] == attempts
    assert vdb.stats["short_circuits"] == 11

    # The interval ends: one probe goes through, succeeds, and the breaker closes.
    clock.advance(1.5)
    assert vdb.breaker.state == "half_open"
    _, body, _ = await ask(client)
    assert body["mode"] == "full" and body["degraded"] is False
    assert fake_weaviate.search_calls == calls + 1
    assert vdb.breaker.state == "closed"
    print(f"\nbreaker: time to open {time_to_open:.3f}s (bound {threshold * timeout_s:.1f}s + slack) "
          f"over {requests} requests")


async def test_half_open_admits_exactly_the_permitted_probes(start_gateway, fake_weaviate, clock):
    client = await start_gateway(**{"resilience.vector_db.timeout_s": 2.0,
                                    "resilience.vector_db.breaker.failure_threshold": 2,
                                    "resilience.vector_db.breaker.open_s": 30.0,
                                    "resilience.vector_db.breaker.half_open_permits": 2,
                                    "resilience.vector_db.retry.max_attempts": 1})
    vdb = guard(client, "vector_db")
    fake_weaviate.set_faults(status=503)
    for _ in range(2):
        await ask(client)
    assert vdb.breaker.state == "open"
    clock.advance(31.0)
    assert vdb.breaker.state == "half_open"

    fake_weaviate.set_faults(status=None, hang=True)  # probes get stuck: their permits stay taken
    calls = fake_weaviate.search_calls
    tasks = {asyncio.create_task(ask(client)) for _ in range(6)}
    await asyncio.wait_for(fake_weaviate.wait_for_calls(search=calls + 2), 5)
    short_circuited: list[dict[str, Any]] = []
    pending = tasks
    while len(short_circuited) < 4:
        done, pending = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done, "the requests beyond the permits did not answer while the probes were stuck"
        short_circuited += [t.result()[1] for t in done]
    assert len(pending) == 2 and fake_weaviate.search_calls == calls + 2
    for body in short_circuited:
        assert_short_circuited(body)
    assert vdb.breaker.snapshot()["half_open_in_flight"] == 2

    fake_weaviate.clear_faults()  # the stuck probes are released and succeed: the breaker closes
    for _, body, _ in await asyncio.gather(*pending):
        assert body["mode"] == "full"
    assert vdb.breaker.state == "closed"
    assert (await ask(client))[1]["mode"] == "full"

    # A failing probe re-opens it, and the calls stop again.
    fake_weaviate.set_faults(status=503)
    for _ in range(2):
        await ask(client)
    assert vdb.breaker.state == "open"
    clock.advance(31.0)
    _, body, _ = await ask(client)
    assert body["degradations"][0] == {"component": "vector_db", "reason": "error"}
    assert vdb.breaker.state == "open"
    calls = fake_weaviate.search_calls
    assert_short_circuited((await ask(client))[1])
    assert fake_weaviate.search_calls == calls


@pytest.mark.parametrize("breaker,advance_s", [
    ({"failure_threshold": 5, "open_s": 5.0}, 3.0),
    # Breaker never opens (no consecutive trip, rates never judged): the retry budget alone.
    ({"failure_threshold": 1000, "min_calls": 1000}, 0.0),
], ids=["breaker_and_budget", "budget_alone"])
async def test_full_outage_costs_at_most_1_2_upstream_attempts_per_request(
        start_gateway, fake_weaviate, clock, breaker, advance_s):
    client = await start_gateway(**{f"resilience.vector_db.breaker.{k}": v for k, v in breaker.items()})
    vdb = guard(client, "vector_db")
    fake_weaviate.set_faults(status=503)
    before = fake_weaviate.search_calls
    requests = 0
    for _ in range(10):  # 100 requests, 10 at a time; with the breaker, spread over 30 s of clock
        for resp, body, _ in await asyncio.gather(*(ask(client) for _ in range(10))):
            assert resp.status == 200 and body["mode"] == "keyword_fallback"
            assert body["degradations"][0]["component"] == "vector_db"
        requests += 10
        clock.advance(advance_s)
    attempts = fake_weaviate.search_calls - before
    assert attempts == vdb.stats["attempts"]
    ratio = attempts / requests
    assert ratio <= 1.2, f"{attempts} upstream attempts for {requests} requests"
    if advance_s == 0.0:
        assert vdb.breaker.snapshot()["totals"]["opened"] == 0
        assert vdb.stats["retries"] >= 10 and vdb.retry.budget.denied > 0  # retried, but within budget
    else:
        assert vdb.breaker.snapshot()["totals"]["opened"] >= 2  # re-opened after failed probes
    print(f"\n100% vector DB failure: {attempts} attempts / {requests} requests = {ratio:.2f} "
          f"(retries {vdb.stats['retries']}, short-circuits {vdb.stats['short_circuits']})")


# ---- deadline ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hung", [("embedder",), ("vector_db",), ("llm",), ("vector_db", "llm")],
                         ids=lambda h: "+".join(h))
async def test_a_hung_stage_never_outlives_the_request_deadline(
        start_gateway, fake_weaviate, anthropic, fake_embeddings, hung):
    client = await start_gateway()  # stage timeouts 2 s / 1.5 s / 8 s: only the 1 s budget can bound them
    stand_in = {"embedder": fake_embeddings, "vector_db": fake_weaviate, "llm": anthropic}
    for name in hung:
        stand_in[name].set_faults(hang=True)
    embeds = fake_embeddings.requests_total
    resp, body, elapsed = await ask(client, headers={"X-Request-Timeout": "1"})
    assert elapsed < 1.0 + 0.15, f"answered after {elapsed:.3f}s with a 1 s budget"
    assert resp.status == 200 and resp.headers["X-RAG-Degraded"] == "true"
    assert body["mode"] == "extractive" and body["answer"]  # retrieval spent the budget, or the LLM hung
    assert [(d["component"], d["reason"]) for d in body["degradations"]][0] == (hung[0], "timeout")
    assert {d["reason"] for d in body["degradations"]} == {"timeout"}
    assert body["sources"][0]["retriever"] == ("hybrid" if hung == ("llm",) else "bm25")
    # The fault was really hit, and no stage started an attempt it could not finish.
    if hung[0] == "embedder":
        assert fake_embeddings.requests_total == embeds + 1 and fake_weaviate.search_calls == 0
    if "vector_db" in hung:
        assert fake_weaviate.search_calls == 1
    assert anthropic.model_counts[PRIMARY] == (1 if hung == ("llm",) else 0)
    assert anthropic.model_counts[FALLBACK] == 0
    print(f"\nhung {'+'.join(hung)}: answered in {elapsed:.3f}s (server total {body['timings_ms']['total']:.0f} ms), "
          f"overshoot {elapsed - 1.0:+.3f}s")


# ---- client disconnect ------------------------------------------------------------------------
@pytest.mark.parametrize("hung", ["llm", "vector_db"])
async def test_client_disconnect_cancels_the_upstream_call_and_is_not_a_breaker_failure(
        start_gateway, fake_weaviate, anthropic, hung):
    client = await start_gateway()
    g = guard(client, hung)
    (anthropic if hung == "llm" else fake_weaviate).set_faults(hang=True)
    with pytest.raises(TimeoutError):
        await client.post("/v1/query", json={"query": QUERY}, timeout=aiohttp.ClientTimeout(total=0.5))
    gone = time.monotonic()
    if hung == "llm":
        await asyncio.wait_for(anthropic.wait_cancelled(1), 5)
    else:
        await asyncio.wait_for(fake_weaviate.wait_for_calls(cancelled=1), 5)
    cancel_lag = time.monotonic() - gone
    assert cancel_lag < 1.0  # well before the stage timeout (8 s / 1.5 s) would have ended the call
    await until(lambda: g.stats["cancelled"] == 1)
    snap = g.breaker.snapshot()
    assert snap["state"] == "closed" and snap["consecutive_failures"] == 0
    assert snap["totals"]["failures"] == 0 and snap["totals"]["ignored"] == 1 and snap["window"]["failures"] == 0
    assert g.stats["failed"] == 0 and g.stats["retries"] == 0

    (anthropic if hung == "llm" else fake_weaviate).clear_faults()
    _, body, _ = await ask(client)
    assert body["mode"] == "full" and body["degraded"] is False
    print(f"\nclient disconnect ({hung}): upstream call cancelled {cancel_lag * 1000:.0f} ms after the client left")


async def test_serve_cancels_the_upstream_call_when_the_client_goes_away(data_dir, tmp_path):
    """aiohttp's run_app does not cancel a disconnected client's handler by default (the test server
    does): a real `rag-sidecar serve` process must, or abandoned requests keep their upstream calls."""
    import os
    import socket
    import subprocess
    import sys

    anthropic = ObservedAnthropic()
    await anthropic.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data_dir), "RAG_SIDECAR__SERVER__PORT": str(port),
           "RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE": "false", "RAG_SIDECAR__LLM__BACKEND": "anthropic",
           "RAG_SIDECAR__LLM__API_KEY": "sk-ant-test-key-0123456789", "RAG_SIDECAR__LLM__BASE_URL": anthropic.url,
           "RAG_SIDECAR__LLM__FALLBACK_MODEL": "null", "RAG_SIDECAR__AUTH__ADMIN_TOKEN": "adm-token-1234",
           "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false", "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # bounded wait for the process to listen and load its KB
                try:
                    async with http.get(base + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("rag-sidecar serve did not become ready")
            anthropic.set_faults(hang=True)
            with pytest.raises(asyncio.TimeoutError):
                async with http.post(base + "/v1/query", json={"query": "green tea"},
                                     timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                    await r.read()
            await asyncio.wait_for(anthropic._cancel_seen.wait(), timeout=5)  # the upstream call was dropped
            assert anthropic.cancelled == 1
            async with http.get(base + "/admin/breakers", headers={"Authorization": "Bearer adm-token-1234"}) as r:
                llm = (await r.json())[f"llm:{PRIMARY}"]
            assert llm["state"] == "closed" and llm["breaker"]["totals"]["failures"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        await anthropic.stop()


# ---- latency and slow calls -------------------------------------------------------------------
async def test_latency_of_half_the_stage_timeout_causes_no_trip_and_no_retry(
        start_gateway, fake_weaviate, anthropic):
    client = await start_gateway(**{"resilience.vector_db.timeout_s": 0.6, "resilience.llm.timeout_s": 0.6})
    fake_weaviate.set_faults(latency_s=0.3)
    anthropic.set_faults(latency_s=0.3)
    results = await asyncio.gather(*(ask(client) for _ in range(10)))  # 10 = min_calls: the rates are judged
    for resp, body, _ in results:
        assert resp.status == 200 and body["mode"] == "full" and body["degraded"] is False
    assert fake_weaviate.search_calls == 10 and anthropic.model_counts[PRIMARY] == 10
    for name in ("vector_db", "llm"):
        g = guard(client, name)
        snap = g.breaker.snapshot()
        assert (g.stats["attempts"], g.stats["retries"], g.stats["failed"]) == (10, 0, 0), name
        assert snap["state"] == "closed" and snap["window"]["calls"] == 10, name
        assert snap["totals"]["failures"] == 0 and snap["totals"]["slow"] == 0, name


async def test_slow_calls_at_the_configured_rate_open_the_breaker(start_gateway, fake_weaviate):
    client = await start_gateway(**{"resilience.vector_db.timeout_s": 1.0,
                                    "resilience.vector_db.breaker.slow_call_s": 0.1,
                                    "resilience.vector_db.breaker.slow_call_rate": 0.75,
                                    "resilience.vector_db.breaker.window": 4,
                                    "resilience.vector_db.breaker.min_calls": 4})
    vdb = guard(client, "vector_db")
    states = []
    for latency in (0.0, 0.0, 0.15, 0.15, 0.15):  # window rates: -, -, -, 2/4 slow, 3/4 slow
        fake_weaviate.set_faults(latency_s=latency)
        _, body, _ = await ask(client)
        assert body["mode"] == "full"  # slow calls still answer
        states.append(vdb.breaker.state)
    assert states == ["closed", "closed", "closed", "closed", "open"]
    snap = vdb.breaker.snapshot()
    assert snap["totals"]["slow"] == 3 and snap["totals"]["failures"] == 0 and snap["totals"]["opened"] == 1

    calls = fake_weaviate.search_calls
    fake_weaviate.clear_faults()
    assert_short_circuited((await ask(client))[1])
    assert fake_weaviate.search_calls == calls


# ---- Retry-After --------------------------------------------------------------------------------
async def test_llm_retry_after_within_the_cap_is_honoured(start_gateway, anthropic):
    client = await start_gateway()  # retry_after_cap_s 2.0
    anthropic.set_faults(status=429, retry_after_s=0.3, models=[PRIMARY])
    _, body, _ = await ask(client)
    primary = anthropic.arrival_times(PRIMARY)
    assert len(primary) == 2, "the primary model was not retried"
    gap = primary[1] - primary[0]
    assert 0.3 <= gap < 0.3 + 0.25, f"retried {gap:.3f}s after a 0.3 s Retry-After"
    assert guard(client, "llm").stats["retries"] == 1
    # Both attempts were rate limited: the fallback model answered.
    assert body["mode"] == "full" and body["model"] == FALLBACK
    assert body["degradations"] == [{"component": "llm", "reason": "rate_limited", "model": PRIMARY}]
    print(f"\nRetry-After 0.3 s honoured: second attempt {gap:.3f}s after the first")


async def test_llm_retry_after_above_the_cap_goes_to_the_next_rung_at_once(start_gateway, anthropic):
    client = await start_gateway()  # retry_after_cap_s 2.0
    anthropic.set_faults(status=429, retry_after_s=30, models=[PRIMARY])
    _, body, elapsed = await ask(client)
    assert anthropic.model_counts[PRIMARY] == 1 and guard(client, "llm").stats["retries"] == 0
    assert body["mode"] == "full" and body["model"] == FALLBACK
    assert body["degradations"] == [{"component": "llm", "reason": "rate_limited", "model": PRIMARY}]
    assert elapsed < 0.5, f"took {elapsed:.3f}s to reach the fallback model"
    print(f"\nRetry-After 30 s (cap 2 s): fallback model answered in {elapsed:.3f}s")


# ---- admin and health ----------------------------------------------------------------------------
async def test_admin_drill_opens_and_closes_a_breaker_and_health_reports_it(start_gateway, fake_weaviate, clock):
    client = await start_gateway(**{"auth.admin_token": "admin-secret-token"})
    admin = {"Authorization": "Bearer admin-secret-token"}
    assert (await client.get("/admin/breakers")).status == 401
    assert (await client.post("/admin/breakers/nope/open", headers=admin)).status == 404

    resp = await client.post("/admin/breakers/vector_db/open", headers=admin)
    snap = await resp.json()
    assert resp.status == 200 and snap["state"] == "open" and snap["breaker"]["forced"] is True
    calls = fake_weaviate.search_calls
    for _ in range(3):
        assert_short_circuited((await ask(client))[1])
    clock.advance(3600)  # a drill holds the breaker open: no half-open however long it lasts
    assert_short_circuited((await ask(client))[1])
    assert fake_weaviate.search_calls == calls

    breakers = await (await client.get("/admin/breakers", headers=admin)).json()
    # one per model, and the role aliases of the configured chain
    assert set(breakers) == {"embedder", "vector_db", f"llm:{PRIMARY}", f"llm:{FALLBACK}", "llm", "llm_fallback"}
    assert breakers["llm"]["alias_of"] == f"llm:{PRIMARY}"
    vdb = breakers["vector_db"]
    assert vdb["state"] == "open" and vdb["breaker"]["opened_at"] is not None
    assert vdb["breaker"]["totals"]["short_circuits"] == 4 and vdb["stats"]["short_circuits"] == 4
    assert vdb["config"]["timeout_s"] == 1.5 and vdb["breaker"]["config"]["failure_threshold"] == 5
    assert breakers[f"llm:{PRIMARY}"]["state"] == "closed"

    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["degraded_components"] == ["vector_db:open"]
    assert health["components"]["vector_db"]["guard"]["state"] == "open"
    assert health["components"]["llm"]["guard"]["state"] == "closed"
    assert health["components"]["shared_state"]["status"] == "off"

    resp = await client.post("/admin/breakers/vector_db/close", headers=admin)
    assert (await resp.json())["state"] == "closed"
    _, body, _ = await ask(client)
    assert body["mode"] == "full" and fake_weaviate.search_calls == calls + 1
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["degraded_components"] == []

    snap = await (await client.post("/admin/breakers/vector_db/reset", headers=admin)).json()
    assert snap["state"] == "closed" and snap["breaker"]["totals"]["short_circuits"] == 0


def test_a_partial_resilience_section_keeps_that_dependencys_defaults():
    """Overriding llm.timeout_s alone used to reset llm.breaker.slow_call_s to the generic 1.0 s, so
    every LLM answer slower than a second counted as slow and tripped the LLM breaker."""
    s = load_settings(None, env={}, overrides={"resilience.llm.timeout_s": 12,
                                                "resilience.vector_db.breaker.failure_threshold": 3})
    assert s.resilience.llm.timeout_s == 12
    assert s.resilience.llm.breaker.slow_call_s == 60.0 and s.resilience.llm.bulkhead.max_concurrent == 512
    assert s.resilience.vector_db.timeout_s == 1.5 and s.resilience.vector_db.breaker.failure_threshold == 3
