"""In-process token buckets: limits, headers, bounded memory. Time is a FakeClock."""
from __future__ import annotations

import pytest

from resilience import Decision, LocalRateLimiter, RateLimitConfig, RedisRateLimiter, make_rate_limiter


async def test_at_twice_the_rate_the_excess_is_denied_with_a_sensible_retry_after(clock):
    limiter = LocalRateLimiter(rate_per_s=10, burst=20, clock=clock)
    decisions = []
    for _ in range(600):  # 20 requests/s for 30 s
        clock.advance(0.05)
        decisions.append(await limiter.acquire("client-a"))
    allowed = sum(d.allowed for d in decisions)
    assert allowed == pytest.approx(20 + 10 * 30, abs=2)  # the burst, then the refill rate
    denied = [d for d in decisions if not d.allowed]
    assert len(denied) == 600 - allowed
    assert all(0 < d.retry_after_s <= 0.1 + 1e-9 for d in denied)  # one token takes 0.1 s to refill
    assert all(d.headers()["Retry-After"] == "1" for d in denied)


async def test_a_flooding_client_does_not_affect_another(clock):
    limiter = LocalRateLimiter(rate_per_s=5, burst=5, clock=clock)
    polite = []
    for i in range(200):
        clock.advance(0.01)
        await limiter.acquire("flooder")
        if i % 25 == 0:  # 4 requests/s, under the limit
            polite.append(await limiter.acquire("polite"))
    assert all(d.allowed for d in polite)


async def test_headers():
    limiter = LocalRateLimiter(rate_per_s=2, burst=3, clock=lambda: 0.0)
    first = await limiter.acquire("k")
    assert first.headers() == {"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "1"}
    await limiter.acquire("k")
    await limiter.acquire("k")
    denied = await limiter.acquire("k")
    assert denied == Decision(allowed=False, remaining=0, limit=3, reset_s=1.5, retry_after_s=0.5)
    assert denied.headers() == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "2",
                                "Retry-After": "1"}


async def test_key_map_is_bounded(clock):
    limiter = LocalRateLimiter(rate_per_s=1, burst=1, clock=clock, max_keys=100)
    for i in range(5000):
        await limiter.acquire(f"ip-{i}")
    assert len(limiter) == 100
    assert not (await limiter.acquire("ip-4999")).allowed, "recent keys are kept"
    assert (await limiter.acquire("ip-0")).allowed, "old keys were evicted and start full"


def test_factory_picks_the_backend(clock):
    assert isinstance(make_rate_limiter(RateLimitConfig(), clock=clock), LocalRateLimiter)
    shared = make_rate_limiter(RateLimitConfig(redis_url="redis://127.0.0.1:1/0"), clock=clock)
    assert isinstance(shared, RedisRateLimiter)
