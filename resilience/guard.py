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

Caller-caused outcomes never count: a timeout counts against the breaker only when the dependency had
the stage's own limit. When the caller's budget (``X-Request-Timeout``) or time queued behind our own
bulkhead or scheduler (:func:`note_queued`) cut the attempt short, the attempt is reported as
``caller_timeout`` / ``queued_timeout`` and the breaker hears nothing (the request still degrades with
reason ``timeout``). :class:`BulkheadFull` raised by ``op()`` (our own scheduler shedding) is ``shed``.
"""
from __future__ import annotations

import asyncio
import random as _random
import time
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from resilience.breaker import CircuitBreaker, StateListener, counts_as_failure
from resilience.bulkhead import BulkheadFull
from resilience.config import GuardConfig
from resilience.deadline import Deadline
from resilience.errors import DependencyUnavailable, Reason, UpstreamError
from resilience.observer import GuardObserver, SafeObserver
from resilience.priority import PriorityBulkhead
from resilience.retry import RetryPolicy, Sleep
from resilience.shared import SharedBreakerState
from resilience.watchdog import TaskLimit, Watchdog, watchdog

T = TypeVar("T")
Clock = Callable[[], float]


# A timeout counts against the dependency only if it had (all but this share of) its own limit.
_OWN_LIMIT_SLACK = 0.01


class _Attempt(TaskLimit):
    """One running attempt: its timeout, an exact entry (zero slack) on the loop's watchdog that cancels the
    attempt's task the way ``asyncio.timeout_at`` would, and the time ``op()`` spent queued in our own queues
    (:func:`note_queued`). An attempt that ends in time, as nearly all do, costs two dict operations instead of
    a timer handle pushed on the loop's heap and cancelled (~3 of the ~12 µs of a healthy ``Guard.call``)."""

    __slots__ = ("seconds",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        # TaskLimit.__init__ inlined: the super() call cost ~130 ns on every attempt (timeit).
        self.task = task
        self.cancelling = task.cancelling()
        self.fired = False
        self.seconds = 0.0


_QUEUED: ContextVar[_Attempt | None] = ContextVar("rag_guard_queued", default=None)


def note_queued(seconds: float) -> None:
    """Tell the guard running this attempt that ``op()`` spent ``seconds`` waiting in one of *our own*
    queues (e.g. a fair scheduler in front of a local engine) before the dependency started: that
    time is neither a slow call nor a timeout of the dependency. No-op outside a guarded call."""
    queued = _QUEUED.get()
    if queued is not None:
        queued.seconds += seconds


def _loop_clock_is_monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).time is asyncio.BaseEventLoop.time  # which returns time.monotonic()


class _AttemptFailed(Exception):
    """``op()`` failed; carries its exception from :meth:`Guard._attempt` to the retry decision."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def attempt_outcome(exc: BaseException) -> str:
    """The observer's name for how an attempt ended."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, BulkheadFull):
        return "shed"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamError):
        return "caller_error" if exc.caller_fault else exc.reason.value
    return "error"


def failure_reason(exc: BaseException) -> Reason:
    if isinstance(exc, BulkheadFull):
        return Reason.SHED
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
        self.bulkhead = PriorityBulkhead(b.max_concurrent, b.max_wait_s, background_share=b.background_share,
                                         max_queue=b.max_queue, name=name)
        self.retry = RetryPolicy(self.config.retry, clock=clock, sleep=sleep, random=random)
        self._on_call = on_call
        self._dog: Watchdog | None = None  # the running loop's, for the attempt limits
        # The guard's clock is time.monotonic and so is the loop's: one reading serves both (the guard reads its
        # clock once per healthy call instead of five times).
        self._same_clock = False
        self.stats: dict[str, Any] = {"calls": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "attempts": 0,
                                      "retries": 0, "short_circuits": 0, "shed": 0, "failures_by_reason": {}}

    async def call(self, op: Callable[[], Awaitable[T]], deadline: Deadline, *, reserve_s: float = 0.0,
                   attempt_timeout_s: float | None = None, stage_timeout_s: float | None = None) -> T:
        """Call ``op()`` (once per attempt) under this dependency's policies and ``deadline``.

        ``reserve_s``: seconds of the deadline kept back for the fallback path;
        ``attempt_timeout_s``: a tighter per-attempt timeout than the configured ``timeout_s``;
        ``stage_timeout_s``: this call's stage limit instead of ``timeout_s`` (an LLM stream's
        time-to-first-token limit differs from a whole RAG generation's).
        Returns what ``op()`` returns; raises :class:`DependencyUnavailable`.
        """
        if self._on_call is not None:
            self._on_call()
        loop = asyncio.get_running_loop()
        dog = self._dog
        if dog is None or dog.loop is not loop:
            dog = self._dog = watchdog()
            self._same_clock = self._clock is time.monotonic and _loop_clock_is_monotonic(loop)
        now = loop.time()
        same_clock = self._same_clock
        start = now if same_clock else self._clock()
        self.stats["calls"] += 1
        self.retry.budget.record_call(start)  # the budget counts on this guard's clock
        stage_s = self.config.timeout_s if stage_timeout_s is None else stage_timeout_s
        # Comparisons rather than min()/max() on this path (here and below): the builtin calls cost
        # ~0.3 of the ~5 µs of a healthy call.
        cap = self.config.attempt_timeout_s or stage_s
        if cap > stage_s:
            cap = stage_s
        if attempt_timeout_s is not None and attempt_timeout_s < cap:
            cap = attempt_timeout_s
        min_attempt = self.config.min_attempt_s
        if cap < min_attempt:
            min_attempt = cap
        # One stage budget for every attempt (Envoy's route timeout vs per_try_timeout): a stage that
        # times out is never paid twice, however the retry budget stands.
        stage_ends = now + stage_s
        attempts = 0
        while True:
            if attempts:
                now = loop.time()
                stage_left = stage_ends - now
            else:  # the first attempt owns the whole stage (no float rounding through stage_ends)
                stage_left = stage_s
            if same_clock and deadline.clock is time.monotonic:
                caller_left = deadline.expires_at - now  # deadline.remaining() at now
                caller_left = (caller_left if caller_left > 0.0 else 0.0) - reserve_s
            else:
                caller_left = deadline.remaining() - reserve_s
            left = stage_left if stage_left <= caller_left else caller_left
            if left < min_attempt:
                raise self._fail(Reason.TIMEOUT, start, attempts,
                                 detail=f"{max(left, 0.0):.3f}s left, an attempt needs {min_attempt:.3f}s")
            try:
                return await self._attempt(op, dog, now, own_limit_s=cap if cap <= stage_left else stage_left,
                                           caller_left_s=caller_left, min_attempt_s=min_attempt, start=start,
                                           attempts=attempts)
            except _AttemptFailed as failed:
                exc = failed.exc
            attempts += 1
            decision = self.retry.decide(attempts, exc, remaining_s=min(stage_ends - loop.time(),
                                                                         deadline.remaining() - reserve_s),
                                         min_attempt_s=min_attempt, breaker_admits=self.breaker.would_admit())
            if not decision.retry:
                raise self._fail(decision.reason or failure_reason(exc), start, attempts, exc=exc,
                                 detail=f"{decision.why}: {exc!r}") from exc
            self.stats["retries"] += 1
            self.observer.on_retry(self.name, failure_reason(exc).value)
            if decision.delay_s > 0:
                await self.retry.sleep(decision.delay_s)

    async def _attempt(self, op: Callable[[], Awaitable[T]], dog: Watchdog, now: float, *,
                       own_limit_s: float, caller_left_s: float, min_attempt_s: float, start: float,
                       attempts: int) -> T:
        """One attempt, from ``now`` (``dog.loop.time()``): a breaker permit, a bulkhead slot, then
        ``op()`` under ``min(own_limit_s, caller_left_s)`` seconds (the bulkhead wait included).

        Returns ``op()``'s result. Raises :class:`DependencyUnavailable` when no attempt could start
        (``breaker_open``, ``shed``), :class:`_AttemptFailed` when ``op()`` failed (the outcome is
        already recorded), and lets ``CancelledError`` through.

        The breaker only hears what the dependency did within its own limit: a timeout counts only if
        the dependency itself had the stage's own limit, i.e. neither the caller's budget
        (``caller_left_s``) nor time queued behind our own bulkhead or scheduler (:func:`note_queued`)
        cut it short; slow-call durations exclude that queueing too.
        """
        loop = dog.loop
        attempt = _Attempt(asyncio.current_task(loop))  # type: ignore[arg-type]  # always in a task
        permit = self.breaker.acquire()
        if permit is None:
            self.stats["short_circuits"] += 1
            self.observer.on_short_circuit(self.name)
            raise self._fail(Reason.BREAKER_OPEN, start, attempts,
                             retry_after_s=self.breaker.open_remaining_s(), detail="short-circuited")
        timeout = own_limit_s if own_limit_s <= caller_left_s else caller_left_s
        ends_at = now + timeout
        bulkhead = self.bulkhead
        if bulkhead.try_acquire():  # a free slot: no coroutine, no wait, no clock reading
            op_started = now
        else:
            try:
                await bulkhead.acquire(max_wait_s=timeout - min_attempt_s)
            except BulkheadFull as exc:
                permit.ignore()
                self.stats["shed"] += 1
                self.observer.on_shed(self.name)
                raise self._fail(Reason.SHED, start, attempts,
                                 detail=f"{bulkhead.max_concurrent} in flight, waited {exc.waited_s:.3f}s") from None
            except BaseException:
                permit.ignore()
                raise
            op_started = loop.time()
        same_clock = self._same_clock
        t0 = op_started if same_clock else self._clock()
        self.stats["attempts"] += 1
        token = _QUEUED.set(attempt)
        try:
            live = dog.exact  # dog.arm_exact(attempt, ends_at) and dog.disarm inlined: they run on every attempt
            live[attempt] = ends_at
            if ends_at < dog.armed:
                dog.arm_exact(attempt, ends_at)
            try:
                result = await op()
            except BaseException as exc:
                live.pop(attempt, None)
                if attempt.timed_out(type(exc)):
                    raise TimeoutError from exc
                raise
            live.pop(attempt, None)  # gone if its limit fired
            if attempt.fired:  # our cancel lost the race with op()'s end: withdraw it
                attempt.timed_out(None)
        except BaseException as exc:
            seconds = max(0.0, (loop.time() if same_clock else self._clock()) - t0 - attempt.seconds)
            bulkhead.release()
            outcome = attempt_outcome(exc)
            if outcome == "timeout" and ends_at - op_started - attempt.seconds < own_limit_s * (1 - _OWN_LIMIT_SLACK):
                # Cut short by the caller's budget or by our own queueing: not the dependency's doing.
                outcome = "caller_timeout" if caller_left_s < own_limit_s else "queued_timeout"
                permit.ignore()
            elif counts_as_failure(exc) and not isinstance(exc, BulkheadFull):
                permit.failure(seconds)
            else:
                permit.ignore()
            self.observer.on_attempt(self.name, outcome, seconds)
            if not isinstance(exc, Exception):  # CancelledError and friends: the caller is gone
                self.stats["cancelled"] += 1
                raise
            raise _AttemptFailed(exc) from None
        finally:
            _QUEUED.reset(token)
        seconds = max(0.0, (loop.time() if same_clock else self._clock()) - t0 - attempt.seconds)
        bulkhead.release()
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
