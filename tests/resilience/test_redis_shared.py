"""Shared state through a real redis-server on loopback: breakers across two replicas, the
rate limit across two limiters, and what happens when Redis dies and comes back."""
from __future__ import annotations

import asyncio
import time

import pytest

from resilience import (BreakerConfig, Deadline, DependencyUnavailable, GuardConfig, GuardRegistry,
                        RedisRateLimiter, RetryConfig, SharedBreakerState, UpstreamError)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

CONFIG = GuardConfig(breaker=BreakerConfig(failure_threshold=2, open_s=30), retry=RetryConfig(max_attempts=1))


class Upstream:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    async def __call__(self):
        self.calls += 1
        if self.fail:
            raise UpstreamError("503", status=503)
        return "ok"


async def eventually(predicate, timeout_s: float = 3.0) -> None:
    """Wait for background propagation (bounded); fails the test if it never happens."""
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def replica(url: str, name: str) -> GuardRegistry:
    shared = SharedBreakerState(url, poll_s=0.1, op_timeout_s=0.3, reconnect_max_s=0.2, instance_id=name)
    return GuardRegistry({"vector_db": CONFIG, "llm": CONFIG}, shared=shared)


@pytest.fixture
async def replicas(redis_url):
    a, b = replica(redis_url, "a"), replica(redis_url, "b")
    await a.start(wait_s=3)
    await b.start(wait_s=3)
    assert a.shared_status == b.shared_status == "ok"
    yield a, b
    await a.close()
    await b.close()


async def trip(registry: GuardRegistry, name: str = "vector_db") -> None:
    for _ in range(2):
        with pytest.raises(DependencyUnavailable):
            await registry[name].call(Upstream(fail=True), Deadline(5))
    assert registry[name].breaker.state == "open"


async def test_a_trip_on_one_replica_short_circuits_the_other(replicas):
    a, b = replicas
    await trip(a)
    await eventually(lambda: b["vector_db"].breaker.state == "open")
    upstream = Upstream()
    with pytest.raises(DependencyUnavailable) as err:
        await b["vector_db"].call(upstream, Deadline(5))
    assert err.value.reason.value == "breaker_open"
    assert upstream.calls == 0
    assert 25 < b["vector_db"].breaker.open_remaining_s() <= 30, "B is open for what is left of A's interval"
    assert b["vector_db"].snapshot()["breaker"]["source"] == "remote"
    assert b["llm"].breaker.state == "closed", "only the tripped dependency is shared"


async def test_a_replica_started_later_picks_up_an_open_breaker(replicas, redis_url):
    a, _ = replicas
    await trip(a)
    late = replica(redis_url, "late")
    await late.start(wait_s=3)
    try:
        await eventually(lambda: late["vector_db"].breaker.state == "open")
    finally:
        await late.close()


async def test_an_operator_close_propagates(replicas):
    a, b = replicas
    await trip(a)
    await eventually(lambda: b["vector_db"].breaker.state == "open")
    a["vector_db"].breaker.close()
    await eventually(lambda: b["vector_db"].breaker.state == "closed")
    assert await b["vector_db"].call(Upstream(), Deadline(5)) == "ok"


async def test_a_forced_open_is_held_across_replicas_by_a_renewed_lease(redis_url):
    a = GuardRegistry({"llm": CONFIG}, shared=SharedBreakerState(redis_url, poll_s=0.05, lease_s=0.3,
                                                                 instance_id="a"))
    b = GuardRegistry({"llm": CONFIG}, shared=SharedBreakerState(redis_url, poll_s=0.05, instance_id="b"))
    try:
        await a.start(wait_s=3)
        await b.start(wait_s=3)
        a["llm"].breaker.force_open()
        await eventually(lambda: b["llm"].breaker.state == "open")
        await asyncio.sleep(0.6)  # two lease lengths: only renewal keeps B open
        assert b["llm"].breaker.state == "open"
        a["llm"].breaker.close()
        await eventually(lambda: b["llm"].breaker.state == "closed")
    finally:
        await a.close()
        await b.close()


async def test_redis_down_means_local_state_and_a_degraded_flag_then_recovery(replicas, redis_server):
    a, b = replicas
    redis_server.stop()
    await eventually(lambda: a.shared_status == b.shared_status == "degraded")
    for registry in (a, b):
        assert registry.snapshot()["vector_db"]["breaker"]["shared"] == "degraded"
    # Both keep serving on local state, without stalls.
    t0 = time.monotonic()
    assert await a["vector_db"].call(Upstream(), Deadline(5)) == "ok"
    assert await b["vector_db"].call(Upstream(), Deadline(5)) == "ok"
    await trip(a)  # a local trip still works; the write to Redis is dropped
    assert time.monotonic() - t0 < 0.5
    assert b["vector_db"].breaker.state == "closed"
    redis_server.start()
    await eventually(lambda: a.shared_status == b.shared_status == "ok", timeout_s=5)
    # On reconnect A republishes the breaker it still holds open.
    await eventually(lambda: b["vector_db"].breaker.state == "open")


async def test_rate_limit_is_shared_across_limiters(redis_url):
    one = RedisRateLimiter(redis_url, rate_per_s=0.01, burst=5)
    two = RedisRateLimiter(redis_url, rate_per_s=0.01, burst=5)
    try:
        verdicts = []
        for _ in range(5):
            verdicts.append(await one.acquire("client-x"))
            verdicts.append(await two.acquire("client-x"))
        assert [d.allowed for d in verdicts] == [True] * 5 + [False] * 5
        assert not any(d.degraded for d in verdicts)
        assert verdicts[4].remaining == 0
        assert 99 < verdicts[-1].retry_after_s <= 100  # one token per 100 s
        assert verdicts[-1].headers()["Retry-After"] == "100"
        assert (await two.acquire("client-y")).allowed, "buckets are per client"
    finally:
        await one.close()
        await two.close()


async def test_rate_limiter_falls_back_to_local_when_redis_is_down(clock, redis_server):
    limiter = RedisRateLimiter(redis_server.url, rate_per_s=0.01, burst=2, clock=clock, recheck_s=1.0)
    try:
        assert (await limiter.acquire("k")).allowed
        redis_server.stop()
        t0 = time.monotonic()
        decisions = [await limiter.acquire("k") for _ in range(3)]
        assert time.monotonic() - t0 < 1.0
        assert all(d.degraded for d in decisions)
        # The local bucket already holds what this replica spent through Redis (1 of 2): before, it was
        # fresh and full, and a client spent both buckets while Redis flapped.
        assert [d.allowed for d in decisions] == [True, False, False]
        assert limiter.snapshot()["status"] == "degraded"
        redis_server.start()
        assert (await limiter.acquire("k")).degraded, "Redis is not retried before recheck_s"
        clock.advance(1.0)
        back = await limiter.acquire("k")
        assert not back.degraded and back.allowed, "the restarted (empty) Redis is used again"
        assert limiter.snapshot()["status"] == "ok"
    finally:
        await limiter.close()


async def test_unreachable_redis_never_blocks_guards():
    registry = GuardRegistry({"llm": CONFIG}, shared=SharedBreakerState(
        RedisServer().url, op_timeout_s=0.1, reconnect_max_s=0.2))  # nothing listens on that port
    try:
        assert await registry["llm"].call(Upstream(), Deadline(5)) == "ok"
        await eventually(lambda: registry.shared_status == "degraded")
        await trip(registry, "llm")
    finally:
        await registry.close()
