"""Admin API behind ``auth.admin_token`` (Bearer). Unset token → every /admin route is 404.

    GET  /admin/breakers                         state, counts, opened_at, config of every guard
                                                 (per LLM model: `llm:<model>`)
    POST /admin/breakers/{name}/{open|close|reset}   for drills
    GET  /admin/kb                               versions (active flagged)
    POST /admin/kb/activate {"version": "..."}   atomic switch; the running gateway reloads at once
    POST /admin/kb/rollback                      back to the version before the active one
    GET  /admin/faults                           injected faults (gateway.upstreams.faultinject)
    PUT  /admin/faults/{dependency}  {FaultSpec} inject (403 unless chaos.allow_fault_injection)
    DELETE /admin/faults[/{dependency}]          clear
"""
from __future__ import annotations

import asyncio
import hmac

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import APIError
from gateway.kb import KBCorrupt, KBError, KBInvalidName, KBStorageError, check_version_name
from gateway.kbload import reload_kb
from gateway.retrieval import ModelMismatch, check_version_servable
from gateway.state import STATE, AppState, guard_named, guard_snapshots


def presents_admin_token(request: web.Request) -> bool:
    """Whether the request carries the configured admin token (constant-time; False when none is set)."""
    token = request.app[STATE].settings.auth.admin_token
    if token is None or not token.get_secret_value():
        return False
    auth = request.headers.get("Authorization", "")
    presented = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("X-Admin-Token", "")
    # Undecodable header bytes arrive as surrogates: compare them as bytes (a 401, never a 500).
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), token.get_secret_value().encode())


def _check_admin(request: web.Request) -> AppState:
    state: AppState = request.app[STATE]
    token = state.settings.auth.admin_token
    if token is None or not token.get_secret_value():
        raise APIError(404, "not_found", "admin API disabled (set auth.admin_token)")
    if not presents_admin_token(request):
        raise APIError(401, "unauthorized", "admin token required (Authorization: Bearer …)",
                       headers={"WWW-Authenticate": "Bearer"})
    return state


async def breakers(request: web.Request) -> web.Response:
    return web.json_response(guard_snapshots(_check_admin(request)))


async def breaker_action(request: web.Request) -> web.Response:
    state = _check_admin(request)
    name, action = request.match_info["name"], request.match_info["action"]
    try:
        guard = guard_named(state, name)
    except KeyError:
        raise APIError(404, "not_found", f"no breaker named {name!r}", field="name") from None
    breaker = guard.breaker
    if action == "open":
        breaker.force_open()
    elif action == "close":
        breaker.close()
    elif action == "reset":
        breaker.reset()
    else:
        raise APIError(404, "not_found", f"unknown action {action!r} (open|close|reset)", field="action")
    return web.json_response(guard.snapshot())


async def kb_versions(request: web.Request) -> web.Response:
    state = _check_admin(request)
    return web.json_response({"active": state.kb_store.active_or_none(), "versions": state.kb_store.list_versions()})


async def _switch_to(state: AppState, version: str, field: str | None) -> web.Response:
    """Load ``version`` (verified private copies, off the event loop), point ACTIVE at it, serve it.

    Unknown → 404, damaged or another model's vectors → 409, disk full → 507 (other write failures 503);
    in every failure ACTIVE and the served version are unchanged and nothing half-written is left."""
    kbs = state.kb_store
    try:
        check_version_servable(kbs, version, state.settings, state.embedder)
        kb = await asyncio.to_thread(kbs.load, version)
        result = await asyncio.to_thread(kbs.activate, version, verified=True)
    except KBStorageError as exc:
        if exc.no_space:
            raise APIError(507, "insufficient_storage", f"{exc} (free disk space and retry)",
                           headers={"Retry-After": "60"}) from None
        raise APIError(503, "storage_error", str(exc), headers={"Retry-After": "60"}) from None
    except (KBCorrupt, ModelMismatch) as exc:
        raise APIError(409, "conflict", str(exc), field=field) from None
    except KBError as exc:
        raise APIError(404, "not_found", str(exc), field=field) from None
    await reload_kb(state, kb)
    return web.json_response(result)


class ActivateRequest(BaseModel):
    """POST /admin/kb/activate."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: str = Field(min_length=1, max_length=255, description="a KB version name: a directory directly "
                         "under the versions directory (`rag-sidecar kb list`), checked by check_version_name")


async def kb_activate(request: web.Request) -> web.Response:
    from gateway.http_input import read_json, validate

    state = _check_admin(request)
    version = validate(ActivateRequest, await read_json(request)).version
    try:
        version = check_version_name(version)
    except KBInvalidName as exc:
        raise APIError(422, "invalid_value", f"version: {exc}", field="version") from None
    return await _switch_to(state, version, "version")


async def kb_rollback(request: web.Request) -> web.Response:
    state = _check_admin(request)
    try:
        target = state.kb_store.rollback_target()
    except KBError as exc:
        raise APIError(409, "conflict", str(exc)) from None
    return await _switch_to(state, target, None)


async def faults_show(request: web.Request) -> web.Response:
    state = _check_admin(request)
    if state.faults is None:
        return web.json_response({"enabled": False, "faults": {}})
    return web.json_response({"enabled": True, "faults": state.faults.snapshot()})


async def faults_set(request: web.Request) -> web.Response:
    from pydantic import ValidationError

    from gateway.http_input import read_json
    from gateway.upstreams.faultinject import DEPENDENCIES, FaultSpec

    state = _check_admin(request)
    if state.faults is None:
        raise APIError(403, "forbidden", "fault injection is off (set chaos.allow_fault_injection: true)")
    dependency = request.match_info["dependency"]
    if dependency not in DEPENDENCIES:
        raise APIError(404, "not_found", f"no dependency {dependency!r} ({'|'.join(DEPENDENCIES)})",
                       field="dependency")
    try:
        spec = FaultSpec.model_validate(await read_json(request))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(422, "invalid_value", f"{field or 'body'}: {err['msg']}", field=field) from None
    return web.json_response(state.faults.set(dependency, spec))


async def faults_clear(request: web.Request) -> web.Response:
    from gateway.upstreams.faultinject import DEPENDENCIES

    state = _check_admin(request)
    dependency = request.match_info.get("dependency")
    if dependency is not None and dependency not in DEPENDENCIES:
        raise APIError(404, "not_found", f"no dependency {dependency!r}", field="dependency")
    if state.faults is not None:  # clearing when injection is off is a no-op, so rollbacks never fail
        state.faults.clear(dependency)
    return web.json_response({"enabled": state.faults is not None,
                              "faults": state.faults.snapshot() if state.faults is not None else {}})


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/faults", faults_show)
    app.router.add_delete("/admin/faults", faults_clear)
    app.router.add_put("/admin/faults/{dependency}", faults_set)
    app.router.add_delete("/admin/faults/{dependency}", faults_clear)
    app.router.add_get("/admin/breakers", breakers)
    app.router.add_post("/admin/breakers/{name}/{action}", breaker_action)
    app.router.add_get("/admin/kb", kb_versions)
    app.router.add_post("/admin/kb/activate", kb_activate)
    app.router.add_post("/admin/kb/rollback", kb_rollback)
