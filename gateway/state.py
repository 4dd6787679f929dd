"""What one running gateway holds, stored on the aiohttp app under ``STATE``."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from gateway.drain import Drain
from gateway.tracing import NOOP, Tracer

if TYPE_CHECKING:
    from fallback.cache import AnswerStore
    from gateway.config import Settings
    from gateway.kb import KBVersion, KnowledgeBase
    from gateway.llm_router import ModelRouter
    from gateway.pipeline import Pipeline
    from gateway.telemetry import Telemetry
    from gateway.upstreams.base import LLM, Embedder, VectorStore
    from gateway.upstreams.faultinject import FaultRegistry
    from resilience import GuardRegistry
    from resilience.ratelimit import RateLimiter


@dataclass
class AppState:
    settings: "Settings"
    telemetry: "Telemetry"
    guards: "GuardRegistry"
    kb_store: "KnowledgeBase"
    llm_router: "ModelRouter"
    embedder: "Embedder | None" = None
    store: "VectorStore | None" = None
    llm: "LLM | None" = None
    cache: "AnswerStore | None" = None
    pipeline: "Pipeline | None" = None
    rate_limiter: "RateLimiter | None" = None
    faults: "FaultRegistry | None" = None  # when chaos.allow_fault_injection
    kb: "KBVersion | None" = None
    kb_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # start-up finished: ready, empty or failed
    startup_stage: str = "starting"
    startup_progress: dict[str, Any] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)  # presented key → short label for logs
    tasks: list[asyncio.Task] = field(default_factory=list)
    started_at: float = 0.0
    tracer: Tracer = NOOP
    clock: Callable[[], float] = time.monotonic  # monotonic seconds for guards and the rate limiter
    worker: dict[str, Any] | None = None  # {index, count, pid} under `serve --workers N`
    drain: Drain = field(default_factory=Drain)  # in-flight requests and the shutdown sequence
    upgrade: Any = None  # gateway.progressive.UpgradeStatus of the served version's background upgrade


STATE: web.AppKey[AppState] = web.AppKey("rag_sidecar_state", AppState)


def all_guards(state: AppState) -> list[Any]:
    """Every guard: the fixed ones (embedder, vector DB), then one per LLM model (and endpoint)."""
    return [*state.guards, *state.llm_router.guards]


def role_aliases(state: AppState) -> dict[str, Any]:
    """``llm`` / ``llm_fallback`` → the guards of the configured model and of its first fallback (the
    names drills and runbooks used before guards were per model)."""
    chain = state.llm_router.chain(state.settings.llm.model)
    return {role: target.guard for role, target in zip(("llm", "llm_fallback"), chain)}


def guard_named(state: AppState, name: str) -> Any:
    """The guard called ``name`` (``vector_db``, ``llm:claude-sonnet-4-6``, or a role alias ``llm`` /
    ``llm_fallback``); KeyError if none."""
    if name in state.guards:
        return state.guards[name]
    guard = state.llm_router.guards.by_name(name) or role_aliases(state).get(name)
    if guard is None:
        raise KeyError(name)
    return guard


def guard_snapshots(state: AppState) -> dict[str, Any]:
    """``{guard name: snapshot}`` of :func:`all_guards` (for /admin/breakers), then the role aliases
    ``llm`` / ``llm_fallback`` (each marked ``alias_of`` its model's guard)."""
    out = {**state.guards.snapshot(), **state.llm_router.guards.snapshot()}
    for role, guard in role_aliases(state).items():
        out[role] = {**out[guard.name], "alias_of": guard.name}
    return out

# Per-request storage (typed keys, as aiohttp recommends).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CLIENT_ID: web.RequestKey[str] = web.RequestKey("client_id", str)
DEADLINE: web.RequestKey[Any] = web.RequestKey("deadline", object)
TRACE: web.RequestKey[Any] = web.RequestKey("trace", object)
QUERY_TEXT: web.RequestKey[str] = web.RequestKey("query_text", str)
ANSWER_TEXT: web.RequestKey[Any] = web.RequestKey("answer_text", object)
STARTED_RESPONSE: web.RequestKey[Any] = web.RequestKey("started_response", object)  # headers already sent
CLIENT_GONE: web.RequestKey[bool] = web.RequestKey("client_gone", bool)  # a write found the client gone: a 499
