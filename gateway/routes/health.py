"""Probes: /livez (process up), /readyz (KB loaded), /health (per-component status)."""
from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from gateway import progressive
from gateway.quality import evaluation_summary
from gateway.retrieval import retrieval_mode
from gateway.routes.admin import presents_admin_token
from gateway.state import STATE, AppState

# An absolute POSIX path of two or more segments (not the path part of a URL: that follows a host; not
# one of our routes).
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?!v1/|admin/)(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]*)")


def without_paths(value: Any) -> Any:
    """``value`` with absolute file paths cut to their last segment (``…/chunks.jsonl``): probes are
    unauthenticated, and a path tells an attacker the layout of the host. Admins see them whole."""
    if isinstance(value, str):
        return _ABS_PATH.sub(lambda m: "…/" + m.group(1), value)
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_paths(v) for v in value]
    return value


def _for_caller(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    return body if presents_admin_token(request) else without_paths(body)


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state: AppState = request.app[STATE]
    if state.ready.is_set():
        return web.json_response({"status": "ready", "kb_version": state.kb.version if state.kb else None,
                                  **({"worker": state.worker} if state.worker else {})})
    return web.json_response(_for_caller(request, {"status": "not_ready", "stage": state.startup_stage,
                                                   "progress": state.startup_progress, "error": state.kb_error}),
                             status=503, headers={"Retry-After": "2"})


def health_report(state: AppState) -> dict[str, Any]:
    """Every component's status; ``status`` is ok | degraded | starting | unavailable (start-up
    finished with nothing to serve; the endpoint then answers 503)."""
    s = state.settings
    kb = state.kb
    now = time.time()
    breakers = state.guards.snapshot()
    chain = state.llm_router.chain(s.llm.model)
    models = state.llm_router.guards.snapshot()
    components: dict[str, Any] = {
        "embedder": {"backend": s.embedder.backend, "guard": breakers.get("embedder")},
        "vector_db": {"backend": s.vector_store.backend, "guard": breakers.get("vector_db")},
        # One guard per model (and endpoint): `guard` is the primary's, `models` every model's seen so far.
        "llm": {"backend": s.llm.effective_backend, "model": s.llm.model, "fallback_model": s.llm.fallback_model,
                "chain": [t.model for t in chain], "guard": models.get(chain[0].guard.name),
                "fallback_guard": models.get(chain[1].guard.name) if len(chain) > 1 else None,
                "models": {name: {"state": g["state"], "in_flight": g["bulkhead"]["in_flight"]}
                           for name, g in models.items()}},
    }
    keyword: dict[str, Any] = {"enabled": s.fallback.keyword_index}
    if kb is not None:
        idx = kb.keyword_index
        keyword.update(kb_version=kb.version, status="ok" if idx is not None else "unavailable",
                       error=kb.keyword_error, size=getattr(idx, "size", None) if idx else None,
                       age_s=round(now - kb.created_at, 1))
    components["keyword_index"] = keyword
    # status: ok | fallback_version (an older verified version) | keyword_only | unavailable | starting
    kb_status = ("starting" if not state.settled.is_set() else "unavailable") if kb is None else \
        (kb.degraded.reason if kb.degraded is not None else "ok")
    components["kb"] = {"status": kb_status, "version": kb.version if kb else None,
                        "chunks": len(kb.chunks) if kb else 0, "created_at": kb.created_at if kb else None,
                        "age_s": round(now - kb.created_at, 1) if kb else None, "error": state.kb_error,
                        "fallback": kb.degraded.as_dict() if kb is not None and kb.degraded is not None else None,
                        "evaluation": evaluation_summary(kb.manifest) if kb else None,
                        **progressive.health_view(state)}  # vectors: fast | quality n/N | quality
    cache = state.cache
    components["answer_cache"] = {"enabled": cache is not None, **(cache.snapshot() if cache is not None else {})}
    limiter = state.rate_limiter
    components["rate_limit"] = {"enabled": limiter is not None,
                                **(limiter.snapshot() if limiter is not None and hasattr(limiter, "snapshot") else {})}
    shared = state.guards.shared
    # Redis down → every breaker runs on this replica's state alone (still serving, but not fleet-wide).
    components["shared_state"] = {"status": state.guards.shared_status,
                                  **(shared.snapshot() if shared is not None else {})}
    degraded = []
    for name in ("embedder", "vector_db"):
        g = components[name].get("guard") or {}
        state_name = (g.get("breaker") or {}).get("state") if isinstance(g.get("breaker"), dict) else g.get("state")
        if state_name not in (None, "closed"):
            degraded.append(f"{name}:{state_name}")
    if kb is not None and kb.degraded is not None:
        degraded.append(f"kb:{kb.degraded.reason}")
    if kb is not None and state.kb_error:
        degraded.append("kb:error")  # a reload or sync failed: serving an older version than intended
    for name, g in components["llm"]["models"].items():
        if g["state"] != "closed":
            degraded.append(f"{name}:{g['state']}")
    if kb is not None and kb.keyword_index is None:
        degraded.append("keyword_index:unavailable")
    if (components["kb"].get("upgrade") or {}).get("state") == "failed":
        degraded.append("kb_upgrade:error")  # the fast vectors serve; the quality model is failing
    if cache is not None and getattr(cache, "healthy", True) is False:
        degraded.append("answer_cache:unhealthy")
    elif components["answer_cache"].get("status") == "degraded":  # Redis down: this replica's cache only
        degraded.append("answer_cache:local_only")
    if components["shared_state"]["status"] == "degraded":
        degraded.append("shared_state:degraded")
    if components["rate_limit"].get("status") == "degraded":
        degraded.append("rate_limit:degraded")
    if not state.ready.is_set():
        # Start-up over and nothing servable: say so (a failed start is not "starting" forever).
        status = "unavailable" if state.settled.is_set() else "starting"
    else:
        status = "degraded" if degraded else "ok"
    return {"status": status, "retrieval": retrieval_mode(s, state.embedder),
            "degraded_components": degraded, "components": components,
            "uptime_s": round(time.monotonic() - state.started_at, 1) if state.started_at else 0.0,
            **({"worker": state.worker} if state.worker else {})}


async def health(request: web.Request) -> web.Response:
    report = health_report(request.app[STATE])
    return web.json_response(_for_caller(request, report), status=503 if report["status"] == "unavailable" else 200)


def setup(app: web.Application) -> None:
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
