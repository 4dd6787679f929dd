"""Token-bucket rate limiting per client key, in-process or shared through Redis.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes one.
:meth:`Decision.headers` gives the ``RateLimit-*`` (IETF draft) and ``Retry-After`` headers.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from resilience._redis import REDIS_FAILURES, redact_url, redis_client
from resilience.config import RateLimitConfig

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """One rate-limit verdict. Times are in seconds.

    ``remaining``: whole tokens left after this request; ``limit``: the bucket size (burst);
    ``reset_s``: until the bucket is full again; ``retry_after_s``: until this request would be
    allowed (0 when allowed); ``degraded``: decided locally because the shared store was down.
    """

    allowed: bool
    remaining: int
    limit: int
    reset_s: float
    retry_after_s: float
    degraded: bool = False

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit/-Remaining/-Reset`` always, plus ``Retry-After`` (whole seconds, ≥ 1)
        when denied."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(math.ceil(self.reset_s))}
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class RateLimiter(Protocol):
    async def acquire(self, key: str, cost: float = 1.0) -> Decision: ...
    def snapshot(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


def _take(tokens: float, rate: float, cost: float) -> tuple[bool, float, float]:
    """Spend ``cost`` from ``tokens`` (already refilled); returns (allowed, tokens_after, retry_after_s)."""
    if tokens >= cost:
        return True, tokens - cost, 0.0
    return False, tokens, (cost - tokens) / rate


class LocalRateLimiter:
    """In-process buckets keyed by client; the least recently seen keys are dropped beyond
    ``max_keys`` (a dropped client just starts again with a full bucket)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic, *,
                 max_keys: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst ≥ 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)
        self.denied = 0

    def decide(self, key: str, cost: float = 1.0) -> Decision:
        """Synchronous :meth:`acquire`."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
        allowed, tokens, retry_after = _take(tokens, self.rate_per_s, cost)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        self.denied += int(not allowed)
        return Decision(allowed, int(tokens), self.burst, (self.burst - tokens) / self.rate_per_s, retry_after)

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them. Never raises."""
        return self.decide(key, cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def snapshot(self) -> dict[str, Any]:
        return {"backend": "local", "rate_per_s": self.rate_per_s, "burst": self.burst,
                "keys": len(self._buckets), "denied": self.denied}

    async def close(self) -> None:
        return None


# Refill and take in one atomic step, timed by the Redis server's clock so replicas agree.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
local elapsed = now - at
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
local retry_after = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry_after)}
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica (one atomic Lua script per request).

    If Redis fails or takes longer than ``timeout_s``, the request is decided by a local bucket
    (``Decision.degraded`` is True, ``snapshot()["status"] == "degraded"``) and Redis is tried
    again after ``recheck_s`` seconds: a Redis outage never turns into 500s or stalls. The local
    bucket is charged on every request, also while Redis decides, so falling back never hands a
    client a fresh burst. Client keys
    are hashed before they reach Redis (they may be API keys).
    """

    def __init__(self, url: str, rate_per_s: float, burst: int, *, clock: Clock = time.monotonic,
                 timeout_s: float = 0.1, recheck_s: float = 1.0, prefix: str = "rag-sidecar",
                 max_keys: int = 10_000) -> None:
        self.url = url
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.timeout_s = timeout_s
        self.recheck_s = recheck_s
        self.prefix = prefix
        self._clock = clock
        self.local = LocalRateLimiter(rate_per_s, burst, clock, max_keys=max_keys)
        self._client: Any = None  # redis.asyncio.Redis once connected
        self._script: Any = None  # its registered token-bucket script
        self._skip_until: float | None = None
        self.status = "ok"
        self.last_error: str | None = None
        self.denied = 0
        self.fallbacks = 0

    def _redis_key(self, key: str) -> str:
        return f"{self.prefix}:rl:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from the shared bucket of ``key``. Never raises."""
        if self._skip_until is None or self._clock() >= self._skip_until:
            try:
                if self._client is None:
                    self._client = redis_client(self.url, self.timeout_s)
                    self._script = self._client.register_script(_TOKEN_BUCKET_LUA)
                async with asyncio.timeout(self.timeout_s):
                    allowed, tokens, retry_after = await self._script(
                        keys=[self._redis_key(key)], args=[self.rate_per_s, self.burst, cost])
            except REDIS_FAILURES as exc:
                self._degrade(exc)
            except Exception as exc:  # e.g. an unexpected reply: a limiter bug must not become a 500
                log.exception("rate limiter: Redis decision failed")
                self._degrade(exc)
            else:
                if self.status != "ok":
                    log.info("rate limiter: Redis %s is back", redact_url(self.url))
                self.status, self._skip_until = "ok", None
                # Shadow the shared decision in the local bucket, so a fall-back to it starts from what
                # this replica really spent: a fresh, full local bucket let a client spend both buckets
                # while Redis flapped (slow for 0.1 s, back after recheck_s, slow again...).
                self.local.decide(key, cost)
                tokens_f = float(tokens)
                self.denied += int(not allowed)
                return Decision(bool(allowed), int(tokens_f), self.burst,
                                (self.burst - tokens_f) / self.rate_per_s, float(retry_after))
        self.fallbacks += 1
        d = self.local.decide(key, cost)
        self.denied += int(not d.allowed)
        return Decision(d.allowed, d.remaining, d.limit, d.reset_s, d.retry_after_s, degraded=True)

    def _degrade(self, exc: BaseException) -> None:
        if self.status != "degraded":
            log.warning("rate limiter: Redis %s unavailable (%r); limiting per replica",
                        redact_url(self.url), exc)
        self.status = "degraded"
        self.last_error = repr(exc)
        self._skip_until = self._clock() + self.recheck_s

    def snapshot(self) -> dict[str, Any]:
        return {"backend": "redis", "status": self.status, "url": redact_url(self.url),
                "rate_per_s": self.rate_per_s, "burst": self.burst, "denied": self.denied,
                "fallbacks": self.fallbacks, "last_error": self.last_error}

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                async with asyncio.timeout(self.timeout_s * 5):
                    await client.aclose()
            except REDIS_FAILURES:
                pass  # closing a dead connection; nothing to recover


def make_rate_limiter(config: RateLimitConfig, *, clock: Clock = time.monotonic) -> LocalRateLimiter | RedisRateLimiter:
    """A Redis-backed limiter when ``config.redis_url`` is set, else an in-process one.
    (``config.enabled`` is the caller's switch; the limiter itself always limits.)"""
    if config.redis_url:
        return RedisRateLimiter(config.redis_url, config.rate_per_s, config.burst, clock=clock,
                                timeout_s=config.redis_timeout_s, max_keys=config.max_keys)
    return LocalRateLimiter(config.rate_per_s, config.burst, clock, max_keys=config.max_keys)
