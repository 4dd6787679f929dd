"""Circuit breaker: an asyncio adapter over pybreaker plus what pybreaker lacks.

pybreaker 1.4.1 supplies the state machine (closed → open → half-open), the consecutive-failure
trip and listeners. It has no asyncio support and a few gaps, filled here:

* **Outcomes are recorded after the call**, through ``with pybreaker.calling(): ...`` around a
  no-op or a raise. We do not run the awaited op inside ``calling()`` because pybreaker treats an
  *excluded* exception as a success (it resets the failure count and closes a half-open breaker):
  a client disconnect would then close a breaker. Excluded outcomes are simply not recorded.
* **Open interval on an injectable clock**: pybreaker checks ``datetime.now()``; we decide the
  open → half-open move ourselves (``_refresh``), so pybreaker's open-state check is never reached.
* **Half-open permits**: only ``half_open_permits`` trial calls run at once; the rest short-circuit.
  The first probe to succeed closes the breaker, the first to fail re-opens it.
* **Failure-rate and slow-call-rate** over a count-based window of the last ``window`` calls,
  judged once ``min_calls`` are in it (resilience4j semantics). The window is cleared on every
  state change. A slow *successful* probe in half-open still closes the breaker.
* **Exclusions**: ``asyncio.CancelledError`` (the client went away) and ``UpstreamError`` with
  ``caller_fault=True`` (a 4xx caused by the caller's input) never count, in any state.
* **Admin drills**: :meth:`open` / :meth:`force_open` hold the breaker open until :meth:`close`
  or :meth:`reset` (no half-open); :meth:`trip` opens it for the normal ``open_s``.
* **Stale outcomes**: a call admitted before a state change reports into a newer state; its result
  is dropped (e.g. late failures of calls started while closed don't re-open a half-open breaker).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any, Awaitable, Callable, Iterable, Protocol, TypeVar

import pybreaker

from resilience.config import BreakerConfig
from resilience.errors import UpstreamError


class SharedState(Protocol):
    """What a breaker tells the state shared with other replicas (:class:`resilience.shared.SharedBreakerState`,
    or the workers' local hub). Declared here so that the breaker does not depend on its implementations."""

    @property
    def status(self) -> str: ...

    def publish_open(self, name: str, duration_s: float | None, opened_at_wall: float | None) -> None: ...

    def publish_closed(self, name: str) -> None: ...

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
StateListener = Callable[[str, str, str], None]
"""``listener(breaker_name, old_state, new_state)``; states are ``closed | open | half_open``."""

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_FROM_PYBREAKER = {pybreaker.STATE_CLOSED: CLOSED, pybreaker.STATE_OPEN: OPEN,
                   pybreaker.STATE_HALF_OPEN: HALF_OPEN}


class CircuitOpenError(Exception):
    """Raised by :meth:`CircuitBreaker.call` when the breaker short-circuits a call."""

    def __init__(self, name: str, retry_after_s: float | None) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        super().__init__(f"circuit breaker {name!r} is open")


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an exception from the guarded call is held against the dependency."""
    if isinstance(exc, asyncio.CancelledError):
        return False
    if isinstance(exc, UpstreamError) and exc.caller_fault:
        return False
    return isinstance(exc, Exception)


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat()


class _RecordedFailure(Exception):
    """Raised inside ``pybreaker.calling()`` to make pybreaker count one failure."""


@dataclass
class _PendingOpen:
    duration_s: float | None  # None = held open (forced)
    source: str  # "local" | "remote"
    opened_at_wall: float | None = None


class _Window:
    """The last ``size`` outcomes as (failed, slow), with running counts: judging the rates after each call
    costs O(1), not two passes over the window."""

    __slots__ = ("_calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)
        self.failures = 0
        self.slow = 0

    def __len__(self) -> int:
        return len(self._calls)

    def append(self, failed: bool, slow: bool) -> int:
        """Record one outcome; returns how many the window now holds."""
        calls = self._calls
        n = len(calls)
        if n == calls.maxlen:
            old_failed, old_slow = calls[0]
            self.failures -= old_failed
            self.slow -= old_slow
        else:
            n += 1
        calls.append((failed, slow))
        if failed:
            self.failures += 1
        if slow:
            self.slow += 1
        return n

    def clear(self) -> None:
        self._calls.clear()
        self.failures = self.slow = 0


class Permit:
    """Admission to make one call. Report exactly one outcome: success, failure or ignore."""

    __slots__ = ("_breaker", "generation", "half_open", "_done")

    def __init__(self, breaker: CircuitBreaker, generation: int, half_open: bool) -> None:
        self._breaker = breaker
        self.generation = generation
        self.half_open = half_open
        self._done = False

    def success(self, duration_s: float) -> None:
        """The call succeeded after ``duration_s`` seconds (slow if > ``slow_call_s``)."""
        if not self._done:  # the check is repeated in each method: one call less on every call's path
            self._done = True
            self._breaker._complete(self, "success", duration_s)

    def failure(self, duration_s: float) -> None:
        """The call failed in a way that counts against the dependency."""
        if not self._done:
            self._done = True
            self._breaker._complete(self, "failure", duration_s)

    def ignore(self) -> None:
        """The call ended without a verdict (cancelled, caller's fault, shed before starting)."""
        if not self._done:
            self._done = True
            self._breaker._complete(self, "ignore", 0.0)


class _Bridge(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: CircuitBreaker) -> None:
        self.owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = _FROM_PYBREAKER.get(old_state.name, CLOSED) if old_state is not None else CLOSED
        self.owner._on_transition(old, _FROM_PYBREAKER[new_state.name])


class CircuitBreaker:
    """One dependency's breaker. Not thread-safe: use it from one event loop.

    ``clock`` (monotonic seconds) times the open interval and is injectable for tests;
    ``wall_clock`` only feeds the ISO timestamps of :meth:`snapshot`.
    """

    def __init__(self, name: str, config: BreakerConfig | None = None, *, clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time, listeners: Iterable[StateListener] = ()) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._wall = wall_clock
        self._listeners: list[StateListener] = list(listeners)
        self._pb = pybreaker.CircuitBreaker(
            fail_max=self.config.failure_threshold, reset_timeout=self.config.open_s, success_threshold=1,
            listeners=[_Bridge(self)], name=name, throw_new_error_on_trip=False)
        self._window = _Window(self.config.window)
        self._generation = 0
        self._half_open_in_flight = 0
        self._pending: _PendingOpen | None = None
        self._forced = False
        self._source = "local"
        self._opened_at: float | None = None
        self._opened_at_wall: float | None = None
        self._open_until: float | None = None  # None while open = held open (forced)
        self._shared: SharedState | None = None
        self._totals = dict.fromkeys(
            ("calls", "successes", "failures", "slow", "ignored", "stale", "short_circuits", "opened"), 0)

    # ---- state -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``: the state the next call meets (``half_open`` once an open
        breaker's ``open_s`` has passed). Reading it changes nothing: the open → half_open transition
        (its listeners, gauge and event) happens when a call arrives (:meth:`acquire`), as in resilience4j
        without automatic transitions — /health, /metrics and admin GETs never move a breaker."""
        if self._probe_due():
            return HALF_OPEN
        return _FROM_PYBREAKER[self._pb.current_state]

    @property
    def forced(self) -> bool:
        return self._forced

    def open_remaining_s(self) -> float | None:
        """Seconds until an open breaker may half-open; None when not open or held open."""
        if self.state != OPEN or self._open_until is None:
            return None
        return max(0.0, self._open_until - self._clock())

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def _probe_due(self) -> bool:
        """Open (not held) and ``open_s`` has passed: the next call is a half-open probe."""
        return (self._pb.current_state == pybreaker.STATE_OPEN and self._open_until is not None
                and self._clock() >= self._open_until)

    def _refresh(self) -> None:
        """Make the due open → half_open transition; only paths that admit or change state call it."""
        if self._probe_due():
            self._pb.half_open()

    # ---- admission ---------------------------------------------------------------------------
    def acquire(self) -> Permit | None:
        """Admit a call (return a :class:`Permit`) or short-circuit it (return None). Never blocks."""
        if self._pb.current_state == pybreaker.STATE_CLOSED:
            # Closed: nothing is due (only an open breaker half-opens), so one state read decides.
            return Permit(self, self._generation, False)
        self._refresh()
        state = self.state
        if state == CLOSED:
            return Permit(self, self._generation, half_open=False)
        if state == HALF_OPEN and self._half_open_in_flight < self.config.half_open_permits:
            self._half_open_in_flight += 1
            return Permit(self, self._generation, half_open=True)
        self._totals["short_circuits"] += 1
        return None

    def would_admit(self) -> bool:
        """Whether :meth:`acquire` would admit a call now (no side effects on permits or counts)."""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN
                                   and self._half_open_in_flight < self.config.half_open_permits)

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op()`` under the breaker. Raises :class:`CircuitOpenError` when short-circuited,
        else whatever ``op`` raises (recorded as a failure unless excluded, see module doc)."""
        permit = self.acquire()
        if permit is None:
            raise CircuitOpenError(self.name, self.open_remaining_s())
        start = self._clock()
        try:
            result = await op()
        except BaseException as exc:
            if counts_as_failure(exc):
                permit.failure(self._clock() - start)
            else:
                permit.ignore()
            raise
        permit.success(self._clock() - start)
        return result

    def _complete(self, permit: Permit, outcome: str, duration_s: float) -> None:
        current = permit.generation == self._generation
        if permit.half_open and current:
            self._half_open_in_flight -= 1
        if outcome == "ignore":
            self._totals["ignored"] += 1
            return
        slow = duration_s > self.config.slow_call_s
        totals = self._totals
        totals["calls"] += 1
        totals["successes" if outcome == "success" else "failures"] += 1
        if slow:
            totals["slow"] += 1
        pb_state = self._pb.current_state
        if not current or pb_state == pybreaker.STATE_OPEN:
            self._totals["stale"] += 1
            return
        failed = outcome == "failure"
        if failed or permit.half_open or pb_state != pybreaker.STATE_CLOSED or self._pb.fail_counter:
            try:
                with self._pb.calling():
                    if failed:
                        raise _RecordedFailure
            except _RecordedFailure:
                pass
            if self._generation != permit.generation or self._pb.current_state != pybreaker.STATE_CLOSED:
                return  # pybreaker changed state (consecutive failures, or a probe's verdict)
        # else: a success while closed with no consecutive failures to reset is a no-op for pybreaker
        # (its closed state only zeroes the failure counter on success); skipping its lock and
        # generator-based context manager is most of the success path's cost.
        window = self._window
        n = window.append(failed, slow)
        if n >= self.config.min_calls and (window.failures / n >= self.config.failure_rate
                                           or window.slow / n >= self.config.slow_call_rate):
            self.trip()

    # ---- transitions -------------------------------------------------------------------------
    def trip(self, duration_s: float | None = None) -> None:
        """Open now for ``duration_s`` (default ``open_s``), then half-open as usual."""
        self._open(_PendingOpen(duration_s if duration_s is not None else self.config.open_s, "local"))

    def open(self) -> None:
        """Admin drill: open and *hold* open (no half-open) until :meth:`close` or :meth:`reset`."""
        self._open(_PendingOpen(None, "local"))

    force_open = open

    def close(self) -> None:
        """Close now (also ends a forced open) and tell other replicas when state is shared."""
        self._forced = False
        self._pb.close()
        if self._shared is not None:
            self._shared.publish_closed(self.name)

    def reset(self) -> None:
        """:meth:`close` and zero every counter (totals, window, consecutive failures)."""
        self.close()
        self._window.clear()
        self._totals = dict.fromkeys(self._totals, 0)

    def _open(self, pending: _PendingOpen) -> None:
        self._pending = pending
        try:
            self._pb.open()
        finally:
            self._pending = None

    def _on_transition(self, old: str, new: str) -> None:
        pending, self._pending = self._pending, None
        if new == OPEN:
            pending = pending or _PendingOpen(self.config.open_s, "local")
            now = self._clock()
            self._forced = pending.duration_s is None
            self._source = pending.source
            self._opened_at = now
            self._opened_at_wall = pending.opened_at_wall or self._wall()
            self._open_until = None if pending.duration_s is None else now + pending.duration_s
            if old != OPEN:
                self._totals["opened"] += 1
            if self._shared is not None and pending.source == "local":
                self._shared.publish_open(self.name, pending.duration_s, self._opened_at_wall)
        else:
            self._forced = False
        if old == new:
            return  # re-opened while open: new timing, same state, no event
        self._generation += 1
        self._half_open_in_flight = 0
        self._window.clear()
        if new == CLOSED:
            self._source = "local"
        for listener in list(self._listeners):
            try:
                listener(self.name, old, new)
            except Exception:  # a listener's bug must not break the state machine
                log.exception("breaker %s: state listener failed", self.name)

    # ---- shared state (called by SharedBreakerState) -------------------------------------------
    def attach_shared(self, shared: SharedState | None) -> None:
        self._shared = shared

    @property
    def shared_status(self) -> str:
        return "off" if self._shared is None else self._shared.status

    def local_open_lease(self) -> tuple[float | None, float | None] | None:
        """(remaining_s or None if held, opened_at_wall) when this replica opened it; else None."""
        if self.state != OPEN or self._source != "local":
            return None
        remaining = None if self._open_until is None else max(0.0, self._open_until - self._clock())
        return remaining, self._opened_at_wall

    def apply_remote_open(self, remaining_s: float, opened_at_wall: float | None = None) -> None:
        """Another replica opened this breaker; stay open at least ``remaining_s`` seconds."""
        if remaining_s <= 0:
            return
        self._refresh()
        state = self.state
        if state == OPEN:
            if self._open_until is not None:
                self._open_until = max(self._open_until, self._clock() + remaining_s)
            return
        self._open(_PendingOpen(remaining_s, "remote", opened_at_wall))

    def apply_remote_close(self) -> None:
        """An operator closed this breaker on another replica: close here too (unless held here)."""
        self._refresh()
        if self._forced or self.state == CLOSED:
            return
        self._pb.close()

    # ---- reporting ---------------------------------------------------------------------------
    def remembers_failures(self) -> bool:
        """True while a failure or slow call still counts towards opening (consecutive count or window)."""
        return bool(self._pb.fail_counter or self._window.failures or self._window.slow)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for /admin/breakers and /health."""
        state = self.state
        failures, slows, n = self._window.failures, self._window.slow, len(self._window)
        is_open = state == OPEN
        open_until_wall = None
        if (is_open and self._open_until is not None and self._opened_at is not None
                and self._opened_at_wall is not None):
            open_until_wall = self._opened_at_wall + (self._open_until - self._opened_at)
        return {
            "name": self.name,
            "state": state,
            "forced": self._forced,
            "source": self._source if state != CLOSED else None,
            "opened_at": _iso(self._opened_at_wall) if state != CLOSED else None,
            "open_until": _iso(open_until_wall),
            "open_remaining_s": self.open_remaining_s(),
            "consecutive_failures": self._pb.fail_counter,
            "half_open_in_flight": self._half_open_in_flight if state == HALF_OPEN else 0,
            "window": {"calls": n, "failures": failures, "slow": slows,
                       "failure_rate": failures / n if n else None,
                       "slow_call_rate": slows / n if n else None},
            "totals": dict(self._totals),
            "shared": self.shared_status,
            "config": self.config.model_dump(),
        }
