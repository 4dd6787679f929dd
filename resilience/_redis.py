"""Redis helpers shared by the breaker-state and rate-limit modules (redis.asyncio only)."""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call may raise when the server is down, slow or unreachable."""


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A redis.asyncio client that fails fast: redis-py 8 retries 10× with backoff by default,
    which would turn "Redis is down" into seconds of stalls."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   retry=Retry(NoBackoff(), 0), health_check_interval=0)


def redact_url(url: str) -> str:
    """``scheme://host:port/db`` without credentials, for snapshots and logs."""
    parts = urlsplit(url)
    if parts.scheme.startswith("unix"):
        return f"{parts.scheme}://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
