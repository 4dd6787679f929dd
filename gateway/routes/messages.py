"""POST /v1/messages — an Anthropic-compatible pass-through, so a bot only sets ANTHROPIC_BASE_URL.

The request body is forwarded unchanged (bytes in, bytes out, streaming included) under the ``llm``
guard: timeouts, retries with Retry-After, circuit breaker, bulkhead. When the requested model's
call fails before the upstream answered (or its breaker is open), the request is replayed once on
``llm.fallback_model`` under the ``llm_fallback`` guard; the response then carries
``X-RAG-Degraded: true``, ``X-RAG-Mode: fallback_model`` and ``X-RAG-Degradations`` (JSON).
When both fail, the client gets an Anthropic-shaped error (``overloaded_error`` 529, or
``rate_limit_error`` 429, with Retry-After) that every Anthropic SDK already handles.

There is no retrieval here, so no cached or extractive rung: those belong to /v1/query.
A stream that breaks after its first byte reached the client is passed through as it broke.

Credentials: the configured ``llm.api_key`` is used upstream when set; otherwise the client's own
``x-api-key`` / ``Authorization`` is forwarded (a pure sidecar). Gateway API keys, when configured,
authenticate the client to the sidecar and are never forwarded.
"""
from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from gateway.errors import APIError
from gateway.routes.query import read_json
from gateway.state import DEADLINE, REQUEST_ID, STATE, AppState
from gateway.upstreams.httperrors import error_for_status
from resilience import DependencyUnavailable, Reason, UpstreamError

DEFAULT_BASE_URL = "https://api.anthropic.com"
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("messages_session", aiohttp.ClientSession)
# Headers forwarded from the client as-is (auth is handled separately).
_FORWARD = ("anthropic-version", "anthropic-beta", "content-type", "accept")
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


def _upstream_headers(request: web.Request, state: AppState) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD}
    headers.setdefault("anthropic-version", "2023-06-01")
    headers["X-Request-Id"] = request[REQUEST_ID]
    key = state.settings.llm.api_key
    if key is not None and key.get_secret_value():
        headers["x-api-key"] = key.get_secret_value()
    elif not state.api_keys:
        for name in ("x-api-key", "Authorization"):
            if name in request.headers:
                headers[name] = request.headers[name]
    return headers


def _anthropic_error(status: int, type_: str, message: str, headers: dict[str, str]) -> web.Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


async def messages(request: web.Request) -> web.StreamResponse:
    state: AppState = request.app[STATE]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise APIError(422, "invalid_type", "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(422, "invalid_value", "model must be a non-empty string", field="model")
    base = (state.settings.llm.base_url or DEFAULT_BASE_URL).rstrip("/")
    url = base + "/v1/messages"
    headers = _upstream_headers(request, state)
    session = request.app[SESSION]
    deadline = request[DEADLINE]
    degradations: list[dict[str, Any]] = []

    rungs = [("llm", model)]
    fallback = state.settings.llm.fallback_model
    if fallback and fallback != model:
        rungs.append(("llm_fallback", fallback))
    last: DependencyUnavailable | None = None
    for guard_name, rung_model in rungs:
        payload = json.dumps({**body, "model": rung_model}).encode()

        async def attempt(payload: bytes = payload) -> aiohttp.ClientResponse:
            try:
                # sock_read bounds the gaps of a stream after the guard has handed it over.
                resp = await session.post(url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=5, sock_read=state.guards[guard_name].config.timeout_s))
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"connection to the LLM failed: {exc!r}", status=None) from exc
            if resp.status >= 400:
                text = await resp.text()
                resp.release()
                raise error_for_status(resp.status, text[:300], resp.headers)
            return resp

        try:
            upstream = await state.guards[guard_name].call(attempt, deadline, reserve_s=0.0)
        except DependencyUnavailable as exc:
            if exc.caller_fault:  # the client's own bad request: relay it, don't degrade
                return _anthropic_error(exc.status or 400, "invalid_request_error", exc.detail or str(exc),
                                        {"X-Request-Id": request[REQUEST_ID]})
            degradations.append({"component": guard_name, "reason": exc.reason.value, "model": rung_model})
            state.telemetry.degradation(guard_name, exc.reason.value)
            last = exc
            continue
        return await _relay(request, upstream, degradations)

    retry_after = str(int((last.retry_after_s if last and last.retry_after_s else 5) + 0.999))
    headers_out = {"Retry-After": retry_after, "X-RAG-Mode": "unavailable", "X-RAG-Degraded": "true",
                   "X-RAG-Degradations": json.dumps(degradations), "X-Request-Id": request[REQUEST_ID]}
    if last is not None and last.reason is Reason.RATE_LIMITED:
        return _anthropic_error(429, "rate_limit_error", "upstream rate limited; retry later", headers_out)
    return _anthropic_error(529, "overloaded_error",
                            "the LLM is unavailable (" + ", ".join(d["reason"] for d in degradations) + ")",
                            headers_out)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse,
                 degradations: list[dict[str, Any]]) -> web.StreamResponse:
    out = web.StreamResponse(status=upstream.status)
    for k, v in upstream.headers.items():
        if k.lower() not in _HOP:
            out.headers[k] = v
    out.headers["X-Request-Id"] = request[REQUEST_ID]
    out.headers["X-RAG-Mode"] = "fallback_model" if degradations else "full"
    out.headers["X-RAG-Degraded"] = "true" if degradations else "false"
    if degradations:
        out.headers["X-RAG-Degradations"] = json.dumps(degradations)
    try:
        await out.prepare(request)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
    except (aiohttp.ClientError, ConnectionResetError) as exc:
        # Bytes already reached the client: pass the break through (the SDK raises on an incomplete stream).
        request.app[STATE].telemetry.degradation("llm", "stream_cut")
        raise ConnectionResetError(f"upstream stream broke: {exc!r}") from exc
    finally:
        upstream.release()
    await out.write_eof()
    return out


async def _session_ctx(app: web.Application):
    # No total timeout here: every call runs under the guard's deadline-aware timeout.
    app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
    yield
    await app[SESSION].close()


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.cleanup_ctx.append(_session_ctx)
