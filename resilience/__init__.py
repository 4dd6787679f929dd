"""Resilience patterns for calling fragile dependencies. Knows nothing about RAG or HTTP servers."""
from resilience.breaker import CircuitBreaker, CircuitOpenError, Permit
from resilience.bulkhead import Bulkhead, BulkheadFull
from resilience.config import BreakerConfig, BulkheadConfig, GuardConfig, RateLimitConfig, RetryConfig
from resilience.deadline import Deadline, DeadlineExceeded
from resilience.errors import DependencyUnavailable, Reason, UpstreamError
from resilience.guard import Guard, GuardRegistry
from resilience.observer import GuardObserver, NoopObserver
from resilience.priority import IdleGate, PriorityBulkhead, background_priority, is_background
from resilience.ratelimit import Decision, LocalRateLimiter, RateLimiter, RedisRateLimiter, make_rate_limiter
from resilience.retry import RetryBudget, RetryDecision, RetryPolicy
from resilience.shared import SharedBreakerState

__all__ = [
    "BreakerConfig", "BulkheadConfig", "GuardConfig", "RateLimitConfig", "RetryConfig",
    "Deadline", "DeadlineExceeded", "DependencyUnavailable", "Reason", "UpstreamError",
    "Guard", "GuardRegistry", "GuardObserver", "NoopObserver",
    "CircuitBreaker", "CircuitOpenError", "Permit", "SharedBreakerState",
    "Bulkhead", "BulkheadFull", "IdleGate", "PriorityBulkhead", "background_priority", "is_background",
    "RetryBudget", "RetryDecision", "RetryPolicy",
    "Decision", "LocalRateLimiter", "RateLimiter", "RedisRateLimiter", "make_rate_limiter",
]
