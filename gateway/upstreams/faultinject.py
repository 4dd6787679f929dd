"""Envoy-fault-filter-style fault injection inside the gateway's own upstream clients (off by default).

For drills against *real* dependencies, where no stand-in can be told to misbehave and a TCP proxy
cannot express an HTTP status. With ``chaos.allow_fault_injection: true`` the embedder, vector store
and LLM clients are wrapped at start-up; nothing is injected until an operator sets a
:class:`FaultSpec` for a dependency through the admin API (admin token required)::

    PUT    /admin/faults/{embedder|vector_db|llm}   {"abort": {"http_status": 503, "percentage": 50}}
    GET    /admin/faults                            what is set, how often it fired
    DELETE /admin/faults/{dependency}               clear one (DELETE /admin/faults clears all)

Per call, like Envoy's fault filter: ``delay`` first (a fixed sleep for ``percentage`` % of calls),
then ``hang`` (wait until the fault is cleared — the guard's deadline ends the call, as a dead peer
would), then ``abort`` (raise :class:`UpstreamError` with ``http_status`` and ``retry_after_s``, or a
connection error when ``http_status`` is null). The injection sits *inside* the guard, so timeouts,
retries, breakers and the degradation ladder react exactly as to the real failure. A spec expires
after ``duration_s`` (capped by ``chaos.max_fault_duration_s``), so a forgotten drill heals itself.

Only the pipeline's calls go through the wrappers; the ``/v1/messages`` pass-through has its own
HTTP client and is not faulted.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fallback.documents import Chunk
from gateway.upstreams.base import LLM, Embedder, Generation, VectorStore
from resilience.errors import UpstreamError
from resilience.waits import wait_event

DEPENDENCIES = ("embedder", "vector_db", "llm")
# A hang re-checks its fault this often (s) in case it was changed without a notify (belt and braces).
_HANG_RECHECK_S = 0.25


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DelayFault(_Spec):
    fixed_delay_s: float = Field(..., ge=0, le=120, description="added before the call (seconds)")
    percentage: float = Field(100.0, ge=0, le=100, description="share of calls delayed (%)")


class AbortFault(_Spec):
    http_status: int | None = Field(503, ge=100, le=599,
                                    description="status of the injected UpstreamError; null = connection error")
    retry_after_s: float | None = Field(None, ge=0, description="Retry-After carried by the error (seconds)")
    percentage: float = Field(100.0, ge=0, le=100, description="share of calls aborted (%)")


class HangFault(_Spec):
    percentage: float = Field(100.0, ge=0, le=100, description="share of calls that never answer (%)")


class FaultSpec(_Spec):
    """What to inject into one dependency's calls. At least one of delay/abort/hang."""

    delay: DelayFault | None = None
    abort: AbortFault | None = None
    hang: HangFault | None = None
    models: list[str] = Field(default_factory=list, description="llm only: restrict to these models ([] = all)")
    duration_s: float | None = Field(None, gt=0, description="expire after this long (seconds; capped)")

    @model_validator(mode="after")
    def _something_to_inject(self) -> "FaultSpec":
        if self.delay is None and self.abort is None and self.hang is None:
            raise ValueError("a fault needs at least one of delay, abort, hang")
        return self


@dataclass
class _Active:
    spec: FaultSpec
    set_at: float                      # time.monotonic()
    expires_at: float
    counts: dict[str, int] = field(default_factory=lambda: {"calls": 0, "delayed": 0, "hung": 0, "aborted": 0})


class FaultRegistry:
    """The faults currently injected, per dependency. One per gateway (``AppState.faults``).

    ``max_duration_s`` caps every spec's lifetime; ``seed`` makes percentage draws reproducible;
    ``clock`` is monotonic seconds (injectable for tests).
    """

    def __init__(self, *, max_duration_s: float = 600.0, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_duration_s = max_duration_s
        self._rng = random.Random(seed)
        self._clock = clock
        self._active: dict[str, _Active] = {}
        self._changed = asyncio.Event()

    # -- switching ------------------------------------------------------------------------------
    def set(self, dependency: str, spec: FaultSpec) -> dict[str, Any]:
        """Replace ``dependency``'s fault. Raises KeyError for an unknown dependency."""
        _check(dependency)
        now = self._clock()
        lifetime = min(spec.duration_s or self.max_duration_s, self.max_duration_s)
        self._active[dependency] = _Active(spec, now, now + lifetime)
        self._notify()
        return self.describe(dependency)

    def clear(self, dependency: str | None = None) -> None:
        """Clear one dependency's fault (None = all); hung calls are released and go on normally."""
        if dependency is None:
            self._active.clear()
        else:
            _check(dependency)
            self._active.pop(dependency, None)
        self._notify()

    def get(self, dependency: str) -> FaultSpec | None:
        active = self._live(dependency)
        return active.spec if active else None

    def describe(self, dependency: str) -> dict[str, Any]:
        active = self._live(dependency)
        if active is None:
            return {"dependency": dependency, "active": False}
        return {"dependency": dependency, "active": True, "fault": active.spec.model_dump(exclude_none=True),
                "expires_in_s": round(active.expires_at - self._clock(), 3), "counts": dict(active.counts)}

    def snapshot(self) -> dict[str, Any]:
        """``{dependency: describe(dependency)}`` for every dependency."""
        return {dep: self.describe(dep) for dep in DEPENDENCIES}

    def _live(self, dependency: str) -> _Active | None:
        active = self._active.get(dependency)
        if active is not None and self._clock() >= active.expires_at:
            self._active.pop(dependency, None)
            self._notify()
            return None
        return active

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _draw(self, percentage: float) -> bool:
        return percentage >= 100.0 or self._rng.random() * 100.0 < percentage

    # -- injecting ------------------------------------------------------------------------------
    async def inject(self, dependency: str, model: str | None = None) -> None:
        """Apply ``dependency``'s fault to one call (return = go on and call the real client).

        Raises :class:`UpstreamError` for an abort; a hang waits until the fault is cleared or the
        caller is cancelled (by its deadline).
        """
        active = self._live(dependency)
        if active is None:
            return
        spec = active.spec
        if spec.models and model not in spec.models:
            return
        active.counts["calls"] += 1
        if spec.delay is not None and self._draw(spec.delay.percentage):
            active.counts["delayed"] += 1
            await asyncio.sleep(spec.delay.fixed_delay_s)
        if spec.hang is not None and self._draw(spec.hang.percentage):
            active.counts["hung"] += 1
            while self._live(dependency) is active:
                await wait_event(self._changed, _HANG_RECHECK_S)
            return
        if spec.abort is not None and self._draw(spec.abort.percentage):
            active.counts["aborted"] += 1
            status = spec.abort.http_status
            if status is None:
                raise UpstreamError(f"injected fault: {dependency} connection error", retryable=True)
            retryable = status >= 500 or status in (408, 409, 429)
            raise UpstreamError(f"injected fault: {dependency} HTTP {status}", status=status, retryable=retryable,
                                retry_after_s=spec.abort.retry_after_s if retryable else None,
                                caller_fault=status in (400, 413, 422))

    # -- wrapping -------------------------------------------------------------------------------
    def wrap(self, embedder: Embedder | None, store: VectorStore, llm: LLM | None
             ) -> tuple[Embedder | None, VectorStore, LLM | None]:
        """The three clients wrapped so their calls pass through :meth:`inject` (None stays None)."""
        return (FaultyEmbedder(embedder, self) if embedder is not None else None,
                FaultyVectorStore(store, self),
                FaultyLLM(llm, self) if llm is not None else None)


def _check(dependency: str) -> None:
    if dependency not in DEPENDENCIES:
        raise KeyError(dependency)


class _Wrapper:
    """Delegates every attribute not overridden (``connect``, ``load``, ``iterate`` …) to the client."""

    def __init__(self, inner: Any, registry: FaultRegistry) -> None:
        self.inner = inner
        self.registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FaultyEmbedder(_Wrapper):
    async def embed_query(self, text: str, **kwargs: Any) -> np.ndarray:
        await self.registry.inject("embedder")
        return await self.inner.embed_query(text, **kwargs)

    async def embed_passages(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        await self.registry.inject("embedder")
        return await self.inner.embed_passages(texts, **kwargs)


class FaultyVectorStore(_Wrapper):
    async def search(self, vector: np.ndarray | None, top_k: int, **kwargs: Any) -> list[Chunk]:
        await self.registry.inject("vector_db")
        return await self.inner.search(vector, top_k, **kwargs)

    async def count(self) -> int:
        await self.registry.inject("vector_db")
        return await self.inner.count()


class FaultyLLM(_Wrapper):
    def _model(self, model: str | None) -> str | None:
        return model or getattr(getattr(self.inner, "config", None), "model", None)

    async def generate(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
                       **kwargs: Any) -> Generation:
        await self.registry.inject("llm", self._model(model))
        return await self.inner.generate(question, chunks, model=model, **kwargs)

    def stream(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
               **kwargs: Any) -> "_FaultyStream":
        return _FaultyStream(lambda: self.registry.inject("llm", self._model(model)),
                             lambda: self.inner.stream(question, chunks, model=model, **kwargs))


class _FaultyStream:
    """The inner stream, opened only after the fault was applied on the first ``__anext__``."""

    def __init__(self, inject: Callable[[], Any], open_stream: Callable[[], AsyncIterator[str]]) -> None:
        self._inject = inject
        self._open = open_stream
        self._inner: AsyncIterator[str] | None = None

    def __aiter__(self) -> "_FaultyStream":
        return self

    async def __anext__(self) -> str:
        if self._inner is None:
            await self._inject()
            self._inner = self._open()
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        inner, self._inner = self._inner, None
        close = getattr(inner, "aclose", None)
        if close is not None:
            await close()
