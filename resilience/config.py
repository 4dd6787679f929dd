"""One config object per pattern, with named defaults (documented in the README's config table)."""
from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BreakerConfig(_Cfg):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    failure_rate: float = Field(0.5, gt=0, le=1, description="failure share over the window that opens it")
    window: int = Field(20, ge=1, description="calls in the sliding (count-based) window")
    min_calls: int = Field(10, ge=1, description="calls needed in the window before rates are judged")
    slow_call_s: float = Field(1.0, gt=0, description="a call slower than this counts as slow")
    slow_call_rate: float = Field(0.8, gt=0, le=1, description="slow share over the window that opens it")
    open_s: float = Field(30.0, gt=0, description="how long the breaker stays open before half-open")
    half_open_permits: int = Field(1, ge=1, description="concurrent trial calls allowed while half-open")


class RetryConfig(_Cfg):
    max_attempts: int = Field(2, ge=1, description="attempts including the first")
    base_s: float = Field(0.05, ge=0, description="backoff base; full jitter in [0, base*2^n]")
    max_backoff_s: float = Field(1.0, ge=0, description="cap on one backoff delay")
    retry_after_cap_s: float = Field(2.0, ge=0, description="longest Retry-After honoured")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries may be at most this share of calls")
    budget_window_s: float = Field(10.0, gt=0, description="sliding window the retry budget is counted over")
    budget_min_per_s: float = Field(1.0, ge=0, description="retries always allowed at this rate")


class BulkheadConfig(_Cfg):
    max_concurrent: int = Field(32, ge=1, description="calls in flight to this dependency at once")
    max_wait_s: float = Field(0.05, ge=0, description="queue wait before a call is shed")
    max_queue: int = Field(128, ge=0, description="callers allowed to wait for a slot; more are shed at once")
    background_share: float = Field(0.25, gt=0, le=1, description=(
        "share of max_concurrent that background work (batch jobs) may hold; it also yields to waiting "
        "interactive calls"))


class GuardConfig(_Cfg):
    timeout_s: float = Field(2.0, gt=0, description=(
        "stage timeout: all attempts of one call, retries and backoff included (capped by the request deadline)"))
    attempt_timeout_s: float | None = Field(None, gt=0, description=(
        "per-attempt timeout (Envoy's per_try_timeout); unset = timeout_s, so an attempt that times out "
        "leaves no time to retry and only fast failures are retried"))
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    bulkhead: BulkheadConfig = Field(default_factory=BulkheadConfig)
    min_attempt_s: float = Field(0.05, gt=0, description="an attempt is not started with less than "
                                 "min(timeout_s, min_attempt_s) of the deadline left")


class RateLimitConfig(_Cfg):
    enabled: bool = Field(False, description="limit requests per client on /v1/* (429 + Retry-After)")
    rate_per_s: float = Field(20.0, gt=0, description="tokens refilled per second per client")
    burst: int = Field(40, ge=1, description="bucket size")
    trusted_proxies: list[str] = Field(default_factory=list, description=(
        "peers (IPs or CIDRs, e.g. 10.0.0.0/8) whose client_ip_header names the client; without an API key "
        "the client is otherwise the peer address (a client-supplied header is never trusted)"))
    client_ip_header: str = Field("X-Forwarded-For", description=(
        "read only from trusted_proxies: the rightmost address in it that is not a trusted proxy is the client"))

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value
    redis_url: str | None = Field(None, description="share buckets across replicas; None = in-process")
    max_keys: int = Field(10_000, ge=1, description="clients tracked in-process (LRU beyond that)")
    redis_timeout_s: float = Field(0.1, gt=0, description="per-decision Redis budget before local fallback")
