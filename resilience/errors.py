"""Typed errors: what a guard raises, and what an upstream client raises for a guard to judge."""
from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    BREAKER_OPEN = "breaker_open"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    ERROR = "error"
    SHED = "shed"
    OVERLOADED = "overloaded"


class UpstreamError(Exception):
    """An upstream call failed. Raised by the upstream clients, judged by the guard.

    ``status`` is the upstream's HTTP/gRPC-mapped status (None for connection errors);
    ``retryable`` says whether another attempt may succeed; ``retry_after_s`` is the upstream's
    Retry-After, if any; ``caller_fault`` marks errors caused by the caller's input (a 400 from the
    upstream), which must never trip a breaker.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 retry_after_s: float | None = None, caller_fault: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.caller_fault = caller_fault

    @property
    def reason(self) -> Reason:
        if self.status == 429:
            return Reason.RATE_LIMITED
        if self.status == 529:
            return Reason.OVERLOADED
        return Reason.ERROR


class DependencyUnavailable(Exception):
    """A dependency could not serve this call; the pipeline steps down its ladder on this.

    ``after_s`` is the time spent in the guard (seconds), ``attempts`` how many upstream attempts
    were started (0 when short-circuited, shed or out of budget), ``retry_after_s`` a hint for the
    client (an upstream's Retry-After, or the time until an open breaker may half-open).
    ``caller_fault`` is True when the upstream rejected the caller's input (a 4xx that is not
    429): it did not count against the breaker and a fallback will likely not help either.
    ``status`` is the upstream status of the last attempt, if any.
    """

    def __init__(self, component: str, reason: Reason | str, *, after_s: float | None = None,
                 attempts: int = 0, retry_after_s: float | None = None, detail: str = "",
                 caller_fault: bool = False, status: int | None = None) -> None:
        self.component = component
        self.reason = Reason(reason)
        self.after_s = after_s
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        self.detail = detail
        self.caller_fault = caller_fault
        self.status = status
        super().__init__(f"{component} unavailable: {self.reason.value}"
                         + (f" after {after_s:.3f}s" if after_s is not None else "")
                         + (f" ({detail})" if detail else ""))
