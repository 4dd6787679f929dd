"""Resilience patterns for calling fragile dependencies. Knows nothing about RAG or HTTP servers."""
from resilience.config import BreakerConfig, BulkheadConfig, GuardConfig, RateLimitConfig, RetryConfig
from resilience.deadline import Deadline, DeadlineExceeded
from resilience.errors import DependencyUnavailable, Reason, UpstreamError
from resilience.guard import Guard, GuardRegistry

__all__ = [
    "BreakerConfig", "BulkheadConfig", "GuardConfig", "RateLimitConfig", "RetryConfig",
    "Deadline", "DeadlineExceeded", "DependencyUnavailable", "Reason", "UpstreamError",
    "Guard", "GuardRegistry",
]
