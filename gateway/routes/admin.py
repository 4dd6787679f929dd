"""Admin API behind ``auth.admin_token`` (Bearer). Unset token → every /admin route is 404.

    GET  /admin/breakers                         state, counts, opened_at, config of every guard
    POST /admin/breakers/{name}/{open|close|reset}   for drills
    GET  /admin/kb                               versions (active flagged)
    POST /admin/kb/activate {"version": "..."}   atomic switch; the running gateway reloads at once
    POST /admin/kb/rollback                      back to the version before the active one
"""
from __future__ import annotations

import hmac

from aiohttp import web

from gateway.errors import APIError
from gateway.kb import KBError
from gateway.state import ANSWER_TEXT, CLIENT_ID, DEADLINE, QUERY_TEXT, REQUEST_ID, STATE, TRACE, AppState


def _check_admin(request: web.Request) -> AppState:
    state: AppState = request.app[STATE]
    token = state.settings.auth.admin_token
    if token is None or not token.get_secret_value():
        raise APIError(404, "not_found", "admin API disabled (set auth.admin_token)")
    auth = request.headers.get("Authorization", "")
    presented = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("X-Admin-Token", "")
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        raise APIError(401, "unauthorized", "admin token required (Authorization: Bearer …)",
                       headers={"WWW-Authenticate": "Bearer"})
    return state


async def breakers(request: web.Request) -> web.Response:
    return web.json_response(_check_admin(request).guards.snapshot())


async def breaker_action(request: web.Request) -> web.Response:
    state = _check_admin(request)
    name, action = request.match_info["name"], request.match_info["action"]
    try:
        guard = state.guards[name]
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
    return web.json_response({"active": state.kb_store.active_version(), "versions": state.kb_store.list_versions()})


async def kb_activate(request: web.Request) -> web.Response:
    from gateway.app import reload_kb
    from gateway.routes.query import read_json

    state = _check_admin(request)
    data = await read_json(request)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version:
        raise APIError(422, "invalid_value", "version must be a non-empty string", field="version")
    try:
        result = state.kb_store.activate(version)
    except KBError as exc:
        raise APIError(404, "not_found", str(exc), field="version") from None
    await reload_kb(state)
    return web.json_response(result)


async def kb_rollback(request: web.Request) -> web.Response:
    from gateway.app import reload_kb

    state = _check_admin(request)
    try:
        result = state.kb_store.rollback()
    except KBError as exc:
        raise APIError(409, "conflict", str(exc)) from None
    await reload_kb(state)
    return web.json_response(result)


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/breakers", breakers)
    app.router.add_post("/admin/breakers/{name}/{action}", breaker_action)
    app.router.add_get("/admin/kb", kb_versions)
    app.router.add_post("/admin/kb/activate", kb_activate)
    app.router.add_post("/admin/kb/rollback", kb_rollback)
