"""Guards keyed by upstream target (e.g. base URL + model), made from a template on first use.

One LLM model failing must not open the breaker of another: each target gets its own breaker,
retry budget and bulkhead (:class:`~resilience.guard.Guard`). Targets come from client input (a
``/v1/messages`` body names any model), so the registry is bounded: past ``max_guards`` the least
recently used *idle* guard (breaker closed, nothing in flight, no failure or slow call still counting
towards opening) is dropped — a guard that is open, busy or failing is never evicted, since forgetting
it would silently close its breaker or reset its count (a client cycling through made-up model names
would otherwise keep a failing model's breaker from ever opening). When every guard is
busy the newest target still gets a guard (the bound is soft by at most the busy ones); failing but
idle guards are kept up to twice the bound.
"""
from __future__ import annotations

import asyncio
import random as _random
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterable, Iterator

from resilience.breaker import StateListener
from resilience.config import GuardConfig
from resilience.guard import Guard
from resilience.observer import GuardObserver
from resilience.retry import Sleep
from resilience.shared import SharedBreakerState

Clock = Callable[[], float]


class KeyedGuards:
    """``guards.get(key, name)`` → the :class:`Guard` for ``key`` (created from ``template``).

    ``name`` is the guard's (and metrics' ``dependency`` tag's) name, given when the key is first
    seen, e.g. ``llm:claude-sonnet-4-6``. ``shared`` (Redis breaker state) and ``observer`` /
    ``listeners`` are attached to every guard made, as for the fixed guards.
    """

    def __init__(self, template: GuardConfig, *, max_guards: int = 64, clock: Clock = time.monotonic,
                 observer: GuardObserver | None = None, listeners: Iterable[StateListener] = (),
                 shared: SharedBreakerState | None = None, sleep: Sleep = asyncio.sleep,
                 random: Callable[[], float] = _random.random) -> None:
        self.template = template
        self.max_guards = max_guards
        self.evicted = 0
        self._clock = clock
        self._observer = observer
        self._listeners = tuple(listeners)
        self._shared = shared
        self._sleep = sleep
        self._random = random
        self._guards: OrderedDict[Hashable, Guard] = OrderedDict()
        self._names: dict[str, Hashable] = {}

    def get(self, key: Hashable, name: str) -> Guard:
        """The guard for ``key``, made on first use (and marked most recently used)."""
        guard = self._guards.get(key)
        if guard is not None:
            self._guards.move_to_end(key)
            return guard
        if len(self._guards) >= self.max_guards:
            self._evict_one()
        on_call = self._ensure_shared_started if self._shared is not None else None
        guard = Guard(name, self.template, clock=self._clock, observer=self._observer, listeners=self._listeners,
                      sleep=self._sleep, random=self._random, on_call=on_call)
        if self._shared is not None:
            self._shared.register(guard.breaker)
        self._guards[key] = guard
        self._names[name] = key
        return guard

    def attach_shared(self, shared: SharedBreakerState | Any) -> None:
        """Share the breakers of every guard, made or to be made, through ``shared`` (Redis or a
        supervisor's hub) — for a process that learns of it after the guards were made."""
        self._shared = shared
        for guard in self._guards.values():
            shared.register(guard.breaker)
            guard._on_call = self._ensure_shared_started

    def touch(self, key: Hashable) -> None:
        """Mark ``key``'s guard most recently used (no-op if it has none)."""
        if key in self._guards:
            self._guards.move_to_end(key)

    def _evict_one(self) -> None:
        # Prefer a guard with nothing to forget; past twice the bound (say, a provider that answers 5xx to
        # made-up model names, so every one of them is "failing") the oldest idle one goes anyway.
        hard = len(self._guards) >= 2 * self.max_guards
        for key, guard in self._guards.items():  # oldest first
            if (guard.breaker.state == "closed" and guard.bulkhead.in_flight == 0 and not guard.bulkhead.waiting
                    and (hard or not guard.breaker.remembers_failures())):
                del self._guards[key]
                self._names.pop(guard.name, None)
                self.evicted += 1
                return

    def _ensure_shared_started(self) -> None:
        if self._shared is not None and not self._shared.started:
            self._shared.start()

    def by_name(self, name: str) -> Guard | None:
        """The guard called ``name`` (for the admin API), None if there is none (or it was evicted)."""
        key = self._names.get(name)
        return self._guards.get(key) if key is not None else None

    def __iter__(self) -> Iterator[Guard]:
        return iter(list(self._guards.values()))

    def __len__(self) -> int:
        return len(self._guards)

    def snapshot(self) -> dict[str, Any]:
        """``{guard name: guard.snapshot()}``, least recently used first."""
        return {g.name: g.snapshot() for g in self._guards.values()}
