"""The guard: deadline-aware timeout → retry → circuit breaker → bulkhead, per dependency.

One :meth:`Guard.call` runs up to ``retry.max_attempts`` attempts. Each attempt:

1. needs ``min(timeout_s, min_attempt_s)`` of the deadline left after ``reserve_s`` (else
   ``timeout``, no attempt);
2. asks the breaker for a permit (open, or half-open with every probe slot taken →
   ``breaker_open`` at once, the op is not called);
3. takes a bulkhead slot, waiting at most ``max_wait_s`` (else ``shed``);
4. runs ``op()`` under ``asyncio.timeout(min(timeout_s, deadline remaining − reserve_s))``; the
   bulkhead wait is part of that time.

Outcomes: ``TimeoutError`` → ``timeout``; :class:`UpstreamError` → its reason (429 →
``rate_limited``, 529 → ``overloaded``, else ``error``); any other exception → ``error``.
A *caller-fault* ``UpstreamError`` (the upstream rejected the caller's input) raises
``DependencyUnavailable(reason="error", caller_fault=True)``: never retried, never counted by the
breaker; the pipeline may step down the ladder or surface a 4xx. ``CancelledError`` (the client
went away) propagates unchanged and is not counted either.
"""
from __future__ import annotations

import asyncio
import random as _random
import time
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from resilience.breaker import CircuitBreaker, StateListener, counts_as_failure
from resilience.bulkhead import Bulkhead, BulkheadFull
from resilience.config import GuardConfig
from resilience.deadline import Deadline
from resilience.errors import DependencyUnavailable, Reason, UpstreamError
from resilience.observer import GuardObserver, SafeObserver
from resilience.retry import RetryPolicy, Sleep
from resilience.shared import SharedBreakerState

T = TypeVar("T")
Clock = Callable[[], float]


def attempt_outcome(exc: BaseException) -> str:
    """The observer's name for how an attempt ended."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamError):
        return "caller_error" if exc.caller_fault else exc.reason.value
    return "error"


def failure_reason(exc: BaseException) -> Reason:
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT
    if isinstance(exc, UpstreamError):
        return exc.reason
    return Reason.ERROR


class Guard:
    """Wraps calls to one dependency. :meth:`call` raises :class:`DependencyUnavailable` on any
    failure and lets ``asyncio.CancelledError`` through.

    ``clock`` (monotonic seconds) drives the breaker's open interval, the retry budget window and
    attempt durations; ``sleep`` and ``random`` drive retry backoff. All are injectable for tests.
    """

    def __init__(self, name: str, config: GuardConfig | None = None, *, clock: Clock = time.monotonic,
                 observer: GuardObserver | None = None, listeners: Iterable[StateListener] = (),
                 sleep: Sleep = asyncio.sleep, random: Callable[[], float] = _random.random,
                 on_call: Callable[[], None] | None = None) -> None:
        self.name = name
        self.config = config or GuardConfig()
        self._clock = clock
        self.observer = SafeObserver(observer)
        self.breaker = CircuitBreaker(name, self.config.breaker, clock=clock,
                                      listeners=[self.observer.on_state_change, *listeners])
        b = self.config.bulkhead
        self.bulkhead = Bulkhead(b.max_concurrent, b.max_wait_s, max_queue=b.max_queue, name=name)
        self.retry = RetryPolicy(self.config.retry, clock=clock, sleep=sleep, random=random)
        self._on_call = on_call
        self.stats: dict[str, Any] = {"calls": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "attempts": 0,
                                      "retries": 0, "short_circuits": 0, "shed": 0, "failures_by_reason": {}}

    async def call(self, op: Callable[[], Awaitable[T]], deadline: Deadline, *, reserve_s: float = 0.0,
                   attempt_timeout_s: float | None = None) -> T:
        """Call ``op()`` (once per attempt) under this dependency's policies and ``deadline``.

        ``reserve_s``: seconds of the deadline kept back for the fallback path;
        ``attempt_timeout_s``: a tighter per-attempt timeout than the configured ``timeout_s``.
        Returns what ``op()`` returns; raises :class:`DependencyUnavailable`.
        """
        if self._on_call is not None:
            self._on_call()
        loop = asyncio.get_running_loop()
        start = self._clock()
        self.stats["calls"] += 1
        self.retry.budget.record_call()
        cap = self.config.attempt_timeout_s or self.config.timeout_s
        if attempt_timeout_s is not None:
            cap = min(cap, attempt_timeout_s)
        cap = min(cap, self.config.timeout_s)
        min_attempt = min(cap, self.config.min_attempt_s)
        # One stage budget for every attempt (Envoy's route timeout vs per_try_timeout): a stage that
        # times out is never paid twice, however the retry budget stands.
        stage_ends = loop.time() + self.config.timeout_s

        def time_left() -> float:
            return min(deadline.remaining() - reserve_s, stage_ends - loop.time())

        attempts = 0
        while True:
            # The first attempt owns the whole stage (time_left() has already lost a few µs of it).
            left = time_left() if attempts else min(deadline.remaining() - reserve_s, self.config.timeout_s)
            if left < min_attempt:
                raise self._fail(Reason.TIMEOUT, start, attempts,
                                 detail=f"{max(left, 0.0):.3f}s left, an attempt needs {min_attempt:.3f}s")
            permit = self.breaker.acquire()
            if permit is None:
                self.stats["short_circuits"] += 1
                self.observer.on_short_circuit(self.name)
                raise self._fail(Reason.BREAKER_OPEN, start, attempts,
                                 retry_after_s=self.breaker.open_remaining_s(), detail="short-circuited")
            attempt_timeout = min(cap, left)
            ends_at = loop.time() + attempt_timeout
            try:
                await self.bulkhead.acquire(max_wait_s=attempt_timeout - min_attempt)
            except BulkheadFull as exc:
                permit.ignore()
                self.stats["shed"] += 1
                self.observer.on_shed(self.name)
                raise self._fail(Reason.SHED, start, attempts,
                                 detail=f"{self.bulkhead.max_concurrent} in flight, waited {exc.waited_s:.3f}s") from None
            except BaseException:
                permit.ignore()
                raise
            attempts += 1
            self.stats["attempts"] += 1
            t0 = self._clock()
            try:
                async with asyncio.timeout_at(ends_at):
                    result = await op()
            except BaseException as exc:
                seconds = self._clock() - t0
                self.bulkhead.release()
                if counts_as_failure(exc):
                    permit.failure(seconds)
                else:
                    permit.ignore()
                self.observer.on_attempt(self.name, attempt_outcome(exc), seconds)
                if not isinstance(exc, Exception):  # CancelledError and friends: the caller is gone
                    self.stats["cancelled"] += 1
                    raise
                decision = self.retry.decide(attempts, exc, remaining_s=time_left(),
                                             min_attempt_s=min_attempt, breaker_admits=self.breaker.would_admit())
                if not decision.retry:
                    raise self._fail(decision.reason or failure_reason(exc), start, attempts, exc=exc,
                                     detail=f"{decision.why}: {exc!r}") from exc
                self.stats["retries"] += 1
                self.observer.on_retry(self.name, failure_reason(exc).value)
                if decision.delay_s > 0:
                    await self.retry.sleep(decision.delay_s)
                continue
            seconds = self._clock() - t0
            self.bulkhead.release()
            permit.success(seconds)
            self.observer.on_attempt(self.name, "success", seconds)
            self.stats["succeeded"] += 1
            return result

    def check_admits(self) -> None:
        """Raise now the short-circuit :meth:`call` would raise, so a caller can skip work whose only
        use is this call (e.g. embedding a query for an open vector DB). No-op when it would admit."""
        if self.breaker.would_admit():
            return
        self.breaker.acquire()  # returns None here; counts the short-circuit in the breaker's totals
        start = self._clock()
        self.stats["calls"] += 1
        self.stats["short_circuits"] += 1
        self.observer.on_short_circuit(self.name)
        raise self._fail(Reason.BREAKER_OPEN, start, 0, retry_after_s=self.breaker.open_remaining_s(),
                         detail="short-circuited before preparing the call")

    def _fail(self, reason: Reason, start: float, attempts: int, *, exc: BaseException | None = None,
              retry_after_s: float | None = None, detail: str = "") -> DependencyUnavailable:
        self.stats["failed"] += 1
        by_reason = self.stats["failures_by_reason"]
        by_reason[reason.value] = by_reason.get(reason.value, 0) + 1
        upstream = exc if isinstance(exc, UpstreamError) else None
        if upstream is not None and upstream.retry_after_s is not None:
            retry_after_s = upstream.retry_after_s
        elif retry_after_s is None and exc is not None:
            retry_after_s = self.breaker.open_remaining_s()  # this failure may just have opened it
        return DependencyUnavailable(
            self.name, reason, after_s=self._clock() - start, attempts=attempts, retry_after_s=retry_after_s,
            detail=detail, caller_fault=bool(upstream and upstream.caller_fault),
            status=upstream.status if upstream else None)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able: breaker state first (``state``), then breaker, bulkhead, retry budget, stats."""
        breaker = self.breaker.snapshot()
        return {"name": self.name, "state": breaker["state"], "breaker": breaker,
                "bulkhead": self.bulkhead.snapshot(), "retry_budget": self.retry.budget.snapshot(),
                "stats": {**self.stats, "failures_by_reason": dict(self.stats["failures_by_reason"])},
                "config": self.config.model_dump()}


class GuardRegistry:
    """The guards of one gateway, by dependency name.

    With ``redis_url`` (or a ready-made ``shared``), breaker opens are shared with other replicas
    (see :mod:`resilience.shared`); its background tasks start with the first call (or
    :meth:`start`) and stop with :meth:`close`. ``listeners`` get ``(dependency, old, new)`` on every
    breaker state change; ``observer`` gets the telemetry hooks of :mod:`resilience.observer`.
    """

    def __init__(self, configs: dict[str, GuardConfig], *, clock: Clock = time.monotonic,
                 observer: GuardObserver | None = None, listeners: Iterable[StateListener] = (),
                 redis_url: str | None = None, shared_prefix: str = "rag-sidecar", shared_poll_s: float = 0.5,
                 instance_id: str | None = None, shared: SharedBreakerState | None = None,
                 sleep: Sleep = asyncio.sleep, random: Callable[[], float] = _random.random) -> None:
        if shared is None and redis_url:
            shared = SharedBreakerState(redis_url, prefix=shared_prefix, poll_s=shared_poll_s,
                                        instance_id=instance_id)
        self.shared = shared
        listeners = tuple(listeners)
        self._guards = {name: Guard(name, cfg, clock=clock, observer=observer, listeners=listeners, sleep=sleep,
                                    random=random, on_call=self._ensure_started if self.shared else None)
                        for name, cfg in configs.items()}
        if self.shared is not None:
            for guard in self._guards.values():
                self.shared.register(guard.breaker)

    def _ensure_started(self) -> None:
        if self.shared is not None and not self.shared.started:
            self.shared.start()

    async def start(self, wait_s: float = 0.0) -> None:
        """Start sharing breaker state now; optionally wait up to ``wait_s`` for Redis."""
        if self.shared is not None:
            self.shared.start()
            if wait_s > 0:
                await self.shared.wait_ready(wait_s)

    @property
    def shared_status(self) -> str:
        """``off`` (no Redis configured), ``starting``, ``ok`` or ``degraded`` (local state only)."""
        return "off" if self.shared is None else self.shared.status

    def __getitem__(self, name: str) -> Guard:
        return self._guards[name]

    def __contains__(self, name: object) -> bool:
        return name in self._guards

    def __iter__(self) -> Iterator[Guard]:
        return iter(self._guards.values())

    def __len__(self) -> int:
        return len(self._guards)

    def snapshot(self) -> dict[str, Any]:
        """``{dependency: guard.snapshot()}``."""
        return {name: g.snapshot() for name, g in self._guards.items()}

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
