"""The ladder of LLM models — one place, used by /v1/query's generation and by /v1/messages.

``router.chain("claude-sonnet-4-6")`` → the targets to try in order: the model itself, then its
fallbacks (``llm.fallbacks[model]``, else ``llm.default_fallbacks``, else ``[llm.fallback_model]``),
duplicates dropped. ``router.context_chain(model)`` is the separate chain tried only when a model
answers 400 "prompt is too long" (``llm.context_window_fallbacks``). Each target carries its own
guard (breaker, retry budget, bulkhead) keyed by base URL + model: a model's failures never open
another model's breaker, and /v1/query and /v1/messages share a guard only when they call the same
model at the same endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from gateway.config import LLMConfig
from gateway.contract import Component
from resilience.guard import Guard
from resilience.registry import KeyedGuards

DEFAULT_BASE_URL = "https://api.anthropic.com"
# Degradation components: the requested model's rung, then the rungs that stand in for it.
PRIMARY, FALLBACK, CONTEXT = Component.LLM, Component.LLM_FALLBACK, Component.LLM_CONTEXT_WINDOW


@dataclass(frozen=True)
class Target:
    """One model at one endpoint, with its guard. ``api_key`` None = the default key (or the client's)."""

    model: str
    base_url: str
    api_key: str | None
    guard: Guard
    component: str  # PRIMARY | FALLBACK | CONTEXT: how the target stands in the chain


class ModelRouter:
    def __init__(self, config: LLMConfig, guards: KeyedGuards) -> None:
        self.config = config
        self.guards = guards
        self.default_base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._chains: dict[str, tuple[int, list[Target]]] = {}  # model → (guards.evicted when made, chain)

    def _endpoint(self, model: str) -> tuple[str, str | None]:
        ep = self.config.endpoints.get(model)
        base = (ep.base_url.rstrip("/") if ep is not None and ep.base_url else self.default_base)
        key = ep.api_key.get_secret_value() if ep is not None and ep.api_key is not None else None
        return base, key

    def guard_for(self, base_url: str, model: str) -> Guard:
        """The guard of ``model`` at ``base_url`` (made on first use)."""
        name = f"llm:{model}" if base_url == self.default_base else f"llm:{model}@{urlparse(base_url).netloc}"
        return self.guards.get((base_url, model), name)

    def target(self, model: str, component: str = PRIMARY) -> Target:
        base, key = self._endpoint(model)
        return Target(model, base, key, self.guard_for(base, model), component)

    def fallbacks(self, model: str) -> list[str]:
        """Fallback model names for ``model`` (not including it)."""
        chain = self.config.fallbacks.get(model)
        if chain is None:
            chain = self.config.default_fallbacks
        if chain is None:
            chain = [self.config.fallback_model] if self.config.fallback_model else []
        out: list[str] = []
        for m in chain:
            if m != model and m not in out:
                out.append(m)
        return out

    def chain(self, model: str) -> list[Target]:
        """``model`` then its fallbacks, as targets (a fresh list: callers may consume it)."""
        cached = self._chains.get(model)
        # A guard dropped from the registry since (LRU) must not be used from this cache.
        if cached is None or cached[0] != self.guards.evicted:
            chain = [self.target(model)] + [self.target(m, FALLBACK) for m in self.fallbacks(model)]
            if len(self._chains) >= self.guards.max_guards:
                self._chains.clear()  # bounded like the guards themselves (models come from clients)
            cached = self._chains[model] = (self.guards.evicted, chain)
        else:
            for t in cached[1]:
                self.guards.touch((t.base_url, t.model))  # keep the registry's LRU order honest
        return list(cached[1])

    def context_chain(self, model: str) -> list[Target]:
        """Larger-context models for a prompt ``model`` refused as too long ([] = relay the 400)."""
        return [self.target(m, CONTEXT) for m in self.config.context_window_fallbacks.get(model, []) if m != model]

    def endpoint_guard(self, base_url: str, what: str) -> Guard:
        """A guard for a model-less call (``GET /v1/models``) at ``base_url``: never a model's guard."""
        return self.guards.get((base_url, "@" + what), f"llm@{what}")
