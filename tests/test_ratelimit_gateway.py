"""Rate limiting at the gateway's edge: a token bucket per client (API key, else the peer address, or
the address a configured trusted proxy names in X-Forwarded-For).

The gateway runs on a frozen clock, so the buckets refill only when the test says so and the counts
are exact whatever the machine's speed.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import ingest_into, make_settings, stack_overrides, state_of
from tests.resilience.fakes import FakeClock

pytestmark = pytest.mark.timeout(30)

QUERY = "green tea steeping time"
LIMITED = {"rate_limit.enabled": True, "rate_limit.rate_per_s": 5, "rate_limit.burst": 5,
           "rate_limit.trusted_proxies": ["127.0.0.1/32"]}  # the tests stand behind a "proxy" on loopback


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_gateway(tmp_path, gateway_factory, fake_weaviate, fake_anthropic, fake_embeddings, clock):
    """``await start_gateway(**overrides)`` → a rate-limited gateway in front of the three stand-ins."""

    async def start(**overrides: Any):
        settings = make_settings(tmp_path / "data", **stack_overrides(
            fake_weaviate, fake_anthropic, fake_embeddings, **{**LIMITED, **overrides}))
        await ingest_into(settings)
        return await gateway_factory(settings, clock)

    return start


async def ask(client, headers: dict[str, str]) -> tuple[Any, dict[str, Any], float]:
    t0 = time.perf_counter()
    resp = await client.post("/v1/query", json={"query": QUERY}, headers=headers)
    body = await resp.json()
    return resp, body, time.perf_counter() - t0


def assert_rate_limited(resp: Any, body: dict[str, Any]) -> None:
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"  # one token at 5/s: 0.2 s, rounded up to whole seconds
    assert resp.headers["RateLimit-Limit"] == "5" and resp.headers["RateLimit-Remaining"] == "0"
    assert int(resp.headers["RateLimit-Reset"]) >= 1
    assert body["error"]["type"] == "rate_limited" and body["error"]["message"]
    assert "X-Request-Id" in resp.headers


async def test_at_twice_the_limit_the_excess_gets_429_fast_and_admitted_requests_are_unaffected(
        start_gateway, fake_weaviate, fake_anthropic, clock):
    client = await start_gateway()
    alice = {"X-Forwarded-For": "203.0.113.1"}
    results = await asyncio.gather(*(ask(client, alice) for _ in range(10)))
    admitted = [(r, b) for r, b, _ in results if r.status == 200]
    limited = [(r, b) for r, b, _ in results if r.status != 200]
    assert len(admitted) == 5 and len(limited) == 5
    for resp, body in admitted:
        assert body["mode"] == "full" and body["degraded"] is False and body["sources"]
        assert resp.headers["RateLimit-Limit"] == "5" and "Retry-After" not in resp.headers
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r, _ in admitted) == [0, 1, 2, 3, 4]
    for resp, body in limited:
        assert_rate_limited(resp, body)
    # Refused requests never reach an upstream.
    assert fake_weaviate.search_calls == 5 and sum(fake_anthropic.model_counts.values()) == 5

    # 429s are decided before any upstream work: fast.
    latencies = []
    for _ in range(5):
        resp, body, seconds = await ask(client, alice)
        assert_rate_limited(resp, body)
        latencies.append(seconds)
    assert max(latencies) < 0.1, latencies

    # Another client is not affected; alice gets one token back after 0.2 s (of the gateway's clock).
    resp, body, _ = await ask(client, {"X-Forwarded-For": "203.0.113.2"})
    assert resp.status == 200 and body["mode"] == "full"
    clock.advance(0.2)
    assert (await ask(client, alice))[0].status == 200
    assert (await ask(client, alice))[0].status == 429
    # Probes and health checks are never limited.
    assert (await client.get("/health", headers=alice)).status == 200
    snap = state_of(client).rate_limiter.snapshot()
    assert snap["backend"] == "local" and snap["denied"] == 11
    print(f"\nrate limit: 429 latency max {max(latencies) * 1000:.1f} ms over {len(latencies)} refusals")


async def test_api_keys_are_limited_per_key_whatever_client_id_they_send(start_gateway):
    keys = ["sk-key-one-0123456789", "sk-key-two-0123456789"]
    client = await start_gateway(**{"auth.api_keys": keys, "rate_limit.burst": 2})
    one = {"Authorization": f"Bearer {keys[0]}", "X-Client-Id": "first"}
    for _ in range(2):
        assert (await ask(client, one))[0].status == 200
    resp, body, _ = await ask(client, one)
    assert resp.status == 429 and resp.headers["RateLimit-Limit"] == "2" and "Retry-After" in resp.headers
    # A fresh X-Client-Id does not buy a fresh bucket: the API key identifies the client.
    assert (await ask(client, {**one, "X-Client-Id": "someone-else"}))[0].status == 429
    resp, body, _ = await ask(client, {"x-api-key": keys[1]})
    assert resp.status == 200 and body["mode"] == "full"
    # A bad key is refused by auth (401), not counted against anyone's bucket.
    assert (await ask(client, {"x-api-key": "sk-wrong"}))[0].status == 401
    assert (await ask(client, {"x-api-key": keys[1]}))[0].status == 200
