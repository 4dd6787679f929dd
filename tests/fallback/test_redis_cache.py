"""Redis answer cache against a real redis-server on loopback: the same fresh/stale semantics as the
diskcache one, JSON values with a TTL, bounded by Redis's maxmemory, and the local cache while Redis is down."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from fallback.cache import AnswerCache, CacheEntry, CacheKey
from fallback.redis_cache import RedisAnswerCache
from tests.fallback.test_cache import ENTRY, FRESH_S, KEY, STALE_S, FakeClock

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


class Mono:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(url: str, tmp_path: Path, clock: FakeClock, mono: Mono | None = None, local: bool = True,
         **kw) -> RedisAnswerCache:
    loc = AnswerCache(tmp_path / "local", fresh_ttl_s=FRESH_S, stale_ttl_s=STALE_S, size_limit_bytes=10 << 20,
                      clock=clock) if local else None
    kw.setdefault("op_timeout_s", 2.0)  # a loaded shared box must not turn a slow reply into "Redis down"
    return RedisAnswerCache(url, local=loc, fresh_ttl_s=FRESH_S, stale_ttl_s=STALE_S, clock=clock,
                            monotonic=mono or Mono(), **kw)


async def test_fresh_then_stale_then_gone_as_json_with_a_ttl(redis_url, tmp_path):
    clock = FakeClock()
    cache = make(redis_url, tmp_path, clock, local=False)
    await cache.put(KEY, ENTRY)
    put_at = clock.now
    raw_client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await raw_client.get(cache.key(KEY))
        assert json.loads(raw) == {**ENTRY.to_json(), "created_at": put_at}  # JSON, never pickle
        assert 0 < await raw_client.ttl(cache.key(KEY)) <= STALE_S  # evictable by a volatile-* policy
    finally:
        await raw_client.aclose()
    clock.now = put_at + FRESH_S
    hit = await cache.get(KEY)
    assert hit is not None and hit.fresh and hit.entry.answer == ENTRY.answer
    clock.now = put_at + FRESH_S + 1
    hit = await cache.get(KEY)
    assert hit is not None and not hit.fresh
    clock.now = put_at + STALE_S + 1
    assert await cache.get(KEY) is None
    assert cache.status == "ok" and cache.errors == 0
    await cache.aclose()


async def test_two_replicas_share_answers(redis_url, tmp_path):
    clock = FakeClock()
    a, b = make(redis_url, tmp_path / "a", clock), make(redis_url, tmp_path / "b", clock)
    await a.put(KEY, ENTRY)
    hit = await b.get(CacheKey("  what is a CIRCUIT breaker", "v1", dict(KEY.params)))
    assert hit is not None and hit.fresh and hit.entry.answer == ENTRY.answer
    assert await b.local.get(KEY) is None  # B's own disk never saw it: the hit came from Redis
    await a.aclose()
    await b.aclose()


async def test_redis_down_answers_from_the_local_cache_and_backs_off(redis_server, tmp_path):
    clock, mono = FakeClock(), Mono()
    errors: list[BaseException] = []
    cache = make(redis_server.url, tmp_path, clock, mono, retry_s=1.0, on_error=errors.append)
    await cache.put(KEY, ENTRY)
    redis_server.stop()
    hit = await cache.get(KEY)  # Redis refused: the written-through local copy answers
    assert hit is not None and hit.fresh and hit.entry.answer == ENTRY.answer
    assert cache.status == "degraded" and cache.snapshot()["serving"] == "local" and cache.healthy
    assert len(errors) == 1
    for _ in range(5):  # within the backoff: Redis is not even tried, so no new errors and no timeouts
        assert (await cache.get(KEY)) is not None
    assert len(errors) == 1
    other = CacheKey("another question", "v1")
    await cache.put(other, ENTRY)  # written locally while Redis is down
    assert (await cache.get(other)) is not None
    redis_server.start()
    mono.now += 1.0  # the backoff has passed: the next call tries Redis again and recovers
    assert (await cache.get(KEY)) is not None
    assert cache.status == "ok" and cache.snapshot()["serving"] == "redis"
    await cache.aclose()


async def test_bounded_by_redis_maxmemory_with_volatile_lru(redis_url, tmp_path):
    """The documented policy works with our keys: every key has a TTL, so volatile-lru can evict them and
    writes keep succeeding at the memory cap (keys without a TTL would make every SET fail with OOM)."""
    raw_client = aioredis.Redis.from_url(redis_url)
    await raw_client.config_set("maxmemory", str(2 << 20))
    await raw_client.config_set("maxmemory-policy", "volatile-lru")
    clock = FakeClock()
    cache = make(redis_url, tmp_path, clock, local=False)
    big = CacheEntry(answer="x" * 8000, sources=[], mode="full", kb_version="v1")
    try:
        for i in range(600):  # ~5 MB of answers into 2 MB
            await cache.put(CacheKey(f"question {i}", "v1"), big)
        assert cache.status == "ok" and cache.errors == 0
        info = await raw_client.info("memory")
        assert info["used_memory"] <= 2.2 * (2 << 20)
        assert (await raw_client.info("stats"))["evicted_keys"] > 0
        assert (await cache.get(CacheKey("question 599", "v1"))) is not None  # the newest survive
    finally:
        await raw_client.aclose()
        await cache.aclose()


async def test_oversized_and_foreign_values(redis_url, tmp_path):
    clock = FakeClock()
    cache = make(redis_url, tmp_path, clock, max_entry_bytes=1000)
    big = CacheEntry(answer="y" * 2000, sources=[], mode="full", kb_version="v1")
    await cache.put(KEY, big)
    raw_client = aioredis.Redis.from_url(redis_url)
    try:
        assert await raw_client.get(cache.key(KEY)) is None  # too big for Redis…
        assert (await cache.get(KEY)).entry.answer == big.answer  # …kept locally
        other = CacheKey("other", "v1")
        await raw_client.set(cache.key(other), b"\x80not json")
        assert await cache.get(other) is None and cache.errors == 1 and cache.status == "ok"
    finally:
        await raw_client.aclose()
        await cache.aclose()
