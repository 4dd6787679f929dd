"""Hooks a guard calls so telemetry can count what happened; the default does nothing."""
from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class GuardObserver(Protocol):
    """Implemented by the telemetry module. Every method must be cheap and must not raise.

    ``outcome`` of an attempt is one of ``success``, ``timeout``, ``error``, ``rate_limited``,
    ``overloaded``, ``caller_error``, ``cancelled``; ``seconds`` is the attempt's duration.
    Breaker states are ``closed``, ``open`` and ``half_open``.
    """

    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None: ...
    def on_retry(self, dependency: str, reason: str) -> None: ...
    def on_shed(self, dependency: str) -> None: ...
    def on_short_circuit(self, dependency: str) -> None: ...
    def on_state_change(self, dependency: str, old: str, new: str) -> None: ...


class NoopObserver:
    """The default observer."""

    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None: ...
    def on_retry(self, dependency: str, reason: str) -> None: ...
    def on_shed(self, dependency: str) -> None: ...
    def on_short_circuit(self, dependency: str) -> None: ...
    def on_state_change(self, dependency: str, old: str, new: str) -> None: ...


class SafeObserver:
    """Wraps an observer so a telemetry bug is logged instead of failing the call it observes."""

    def __init__(self, inner: GuardObserver | None) -> None:
        self.inner: GuardObserver = inner if inner is not None else NoopObserver()

    def _emit(self, method: str, *args: object) -> None:
        try:
            getattr(self.inner, method)(*args)
        except Exception:  # telemetry must never change a call's outcome
            log.exception("observer %s.%s failed", type(self.inner).__name__, method)

    def on_attempt(self, dependency: str, outcome: str, seconds: float) -> None:
        try:  # once per attempt: called directly rather than through _emit's getattr
            self.inner.on_attempt(dependency, outcome, seconds)
        except Exception:
            log.exception("observer %s.%s failed", type(self.inner).__name__, "on_attempt")

    def on_retry(self, dependency: str, reason: str) -> None:
        self._emit("on_retry", dependency, reason)

    def on_shed(self, dependency: str) -> None:
        self._emit("on_shed", dependency)

    def on_short_circuit(self, dependency: str) -> None:
        self._emit("on_short_circuit", dependency)

    def on_state_change(self, dependency: str, old: str, new: str) -> None:
        self._emit("on_state_change", dependency, old, new)
