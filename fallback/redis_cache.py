"""Answer cache shared by replicas through Redis, with the local diskcache as its fallback.

Same semantics as :class:`fallback.cache.AnswerCache`: an entry carries its wall-clock ``created_at``; a
hit younger than ``fresh_ttl_s`` is served instead of calling the LLM, one younger than ``stale_ttl_s``
only when the LLM is down. Values are JSON (never pickle) under ``{prefix}:answer:{sha256}`` with
``EX = stale_ttl_s``, so every key expires on its own and a ``volatile-*`` or ``allkeys-*``
``maxmemory-policy`` can evict it (see the README: Redis needs ``maxmemory`` set to bound memory).
Freshness across replicas compares wall clocks: keep replicas NTP-synced (a skew of seconds against a
300 s fresh TTL is harmless).

Every answer is written through to the local cache as well, and a read that misses in Redis (or cannot
reach it) asks the local one. Redis down or slower than ``op_timeout_s``: ``status`` is ``degraded``,
this replica answers from its local cache alone, and Redis is retried after a capped exponential
backoff so an outage costs one timeout per backoff period, not one per request. Never raises.
All I/O is ``redis.asyncio`` under a timeout: nothing blocks the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fallback.cache import AnswerCache, CacheEntry, CacheHit, CacheKey, hit_of
from resilience._redis import REDIS_FAILURES, redact_url, redis_client

log = logging.getLogger(__name__)


class RedisAnswerCache:
    """``get``/``put`` against Redis first, the ``local`` cache (may be None) second.

    ``op_timeout_s`` bounds each Redis command; after a failure Redis is skipped for ``retry_s``,
    doubling up to ``retry_max_s``. Entries whose JSON exceeds ``max_entry_bytes`` stay local only.
    ``clock`` is wall-clock seconds (``created_at``), ``monotonic`` times the backoff.
    """

    def __init__(self, url: str, *, local: AnswerCache | None, fresh_ttl_s: float, stale_ttl_s: float,
                 prefix: str = "rag-sidecar", op_timeout_s: float = 0.25, retry_s: float = 1.0,
                 retry_max_s: float = 30.0, max_entry_bytes: int = 256 << 10,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if not 0 <= fresh_ttl_s <= stale_ttl_s:
            raise ValueError(f"need 0 <= fresh_ttl_s <= stale_ttl_s, got {fresh_ttl_s}, {stale_ttl_s}")
        self.url = url
        self.local = local
        self.fresh_ttl_s = fresh_ttl_s
        self.stale_ttl_s = stale_ttl_s
        self.prefix = prefix
        self.op_timeout_s = op_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.max_entry_bytes = max_entry_bytes
        self.status = "starting"  # starting | ok | degraded (Redis unreachable: local cache only)
        self.errors = 0
        self.last_error: str | None = None
        self.degraded_since: float | None = None
        self._clock = clock
        self._mono = monotonic
        self._on_error = on_error
        self._client: Any = None
        self._retry_at = 0.0
        self._backoff = retry_s

    def key(self, key: CacheKey) -> str:
        return f"{self.prefix}:answer:{key.digest()}"

    @property
    def healthy(self) -> bool:
        """True while some cache answers: Redis, or the local cache standing in for it."""
        return self.status != "degraded" or (self.local is not None and self.local.healthy)

    def snapshot(self) -> dict[str, Any]:
        local = self.local.snapshot() if self.local is not None else None
        return {"backend": "redis", "status": self.status, "healthy": self.healthy, "errors": self.errors,
                "serving": "local" if self.status == "degraded" else "redis", "url": redact_url(self.url),
                "last_error": self.last_error, "degraded_since": self.degraded_since, "local": local}

    # ---- Redis with backoff ------------------------------------------------------------------------
    def _usable(self) -> bool:
        return self.status != "degraded" or self._mono() >= self._retry_at

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.url, self.op_timeout_s)
        return self._client

    def _ok(self) -> None:
        if self.status == "degraded":
            log.info("answer cache: Redis back at %s", redact_url(self.url))
        self.status, self.degraded_since, self._backoff = "ok", None, self.retry_s

    def _down(self, exc: BaseException) -> None:
        if self.status != "degraded":
            log.warning("answer cache: Redis unavailable (%r); serving the local cache", exc)
            self.degraded_since = self._clock()
        self.status = "degraded"
        self.last_error = repr(exc)
        self._retry_at = self._mono() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)
        self.errors += 1
        if self._on_error is not None:
            self._on_error(exc)

    # ---- the cache -----------------------------------------------------------------------------------
    async def get(self, key: CacheKey) -> CacheHit | None:
        """Redis's entry if it has one, else the local cache's. Never raises."""
        if self._usable():
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    raw = await self._redis().get(self.key(key))
            except REDIS_FAILURES as exc:
                self._down(exc)
            else:
                self._ok()
                hit = self._decode(raw)
                if hit is not None:
                    return hit
        return await self.local.get(key) if self.local is not None else None

    def _decode(self, raw: bytes | None) -> CacheHit | None:
        if raw is None:
            return None
        try:
            entry = CacheEntry.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:  # not ours, or damaged: a miss, counted
            self.errors += 1
            self.last_error = repr(exc)
            if self._on_error is not None:
                self._on_error(exc)
            return None
        return hit_of(entry, self._clock(), self.fresh_ttl_s, self.stale_ttl_s)

    async def put(self, key: CacheKey, entry: CacheEntry) -> None:
        """Write to Redis (``EX`` = ``stale_ttl_s``) and through to the local cache. Never raises."""
        if entry.created_at is None:
            entry = replace(entry, created_at=self._clock())
        try:
            value = json.dumps(entry.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:  # not JSON-able: nothing is stored anywhere
            self.errors += 1
            if self._on_error is not None:
                self._on_error(exc)
            return
        if len(value) <= self.max_entry_bytes and self._usable():
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    await self._redis().set(self.key(key), value, ex=max(1, math.ceil(self.stale_ttl_s)))
            except REDIS_FAILURES as exc:
                self._down(exc)
            else:
                self._ok()
        if self.local is not None:
            await self.local.put(key, entry)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    await client.aclose()
            except REDIS_FAILURES:
                pass
        if self.local is not None:
            await self.local.aclose()
