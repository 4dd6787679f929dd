"""The guard: deadline-aware timeout → retry → circuit breaker → bulkhead, per dependency.

Minimal version (timeout + typed errors); the full composition lands with the resilience issue.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, TypeVar

from resilience.config import GuardConfig
from resilience.deadline import Deadline, DeadlineExceeded
from resilience.errors import DependencyUnavailable, Reason, UpstreamError

T = TypeVar("T")


class Guard:
    """Wraps calls to one dependency. ``call`` raises :class:`DependencyUnavailable` on any failure."""

    def __init__(self, name: str, config: GuardConfig) -> None:
        self.name = name
        self.config = config

    async def call(self, op: Callable[[], Awaitable[T]], deadline: Deadline, *, reserve_s: float = 0.0) -> T:
        start = time.monotonic()
        try:
            timeout = deadline.stage_timeout(self.config.timeout_s, reserve_s)
        except DeadlineExceeded:
            raise DependencyUnavailable(self.name, Reason.TIMEOUT, after_s=0.0, detail="no budget") from None
        try:
            async with asyncio.timeout(timeout):
                return await op()
        except TimeoutError:
            raise DependencyUnavailable(self.name, Reason.TIMEOUT, after_s=time.monotonic() - start,
                                        attempts=1) from None
        except UpstreamError as exc:
            raise DependencyUnavailable(self.name, exc.reason, after_s=time.monotonic() - start, attempts=1,
                                        retry_after_s=exc.retry_after_s, detail=str(exc)) from exc

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "state": "closed", "config": self.config.model_dump()}


class GuardRegistry:
    """The guards of one gateway, by dependency name."""

    def __init__(self, configs: dict[str, GuardConfig]) -> None:
        self._guards = {name: Guard(name, cfg) for name, cfg in configs.items()}

    def __getitem__(self, name: str) -> Guard:
        return self._guards[name]

    def __iter__(self):
        return iter(self._guards.values())

    def snapshot(self) -> dict[str, Any]:
        return {name: g.snapshot() for name, g in self._guards.items()}

    async def close(self) -> None:
        return None
