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

import asyncio
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway import contract
from gateway.contract import Component, Mode
from gateway.errors import APIError
from gateway.http_input import read_json, validate
from gateway.state import DEADLINE, REQUEST_ID, STARTED_RESPONSE, STATE, AppState
from gateway.tracing import outgoing_headers
from gateway.upstreams.httperrors import error_for_status
from resilience import DependencyUnavailable, Reason, UpstreamError

DEFAULT_BASE_URL = "https://api.anthropic.com"
log = logging.getLogger("rag_sidecar.messages")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("messages_session", aiohttp.ClientSession)
# Headers forwarded from the client as-is (auth is handled separately).
_FORWARD = ("anthropic-version", "anthropic-beta", "content-type", "accept")
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


class MessagesRequest(BaseModel):
    """The part of an Anthropic Messages request the gateway itself reads; every other field is relayed
    unchanged and judged by the upstream (its 400 comes back as-is)."""

    # Required by Anthropic (the upstream enforces them; documented so generated requests are realistic).
    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["model", "messages", "max_tokens"]})
    model: StrictStr = Field(min_length=1, description="the model asked for; replayed on llm.fallback_model")
    messages: Any = Field(None, description="Anthropic messages (required and validated upstream)",
                          json_schema_extra={"type": "array", "minItems": 1, "items": {
                              "type": "object", "required": ["role", "content"],
                              "properties": {"role": {"enum": ["user", "assistant"]},
                                             "content": {"type": "string", "minLength": 1}}}})
    max_tokens: Any = Field(None, description="Anthropic's output cap (required and validated upstream)",
                            json_schema_extra={"type": "integer", "minimum": 1, "maximum": 4096})
    stream: Any = Field(False, description="true: server-sent events relayed as they come")


def _upstream_headers(request: web.Request, state: AppState) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD}
    headers.setdefault("anthropic-version", "2023-06-01")
    headers["X-Request-Id"] = request[REQUEST_ID]
    headers.update(outgoing_headers())  # the request span's traceparent (the client's own is not forwarded)
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
    model = validate(MessagesRequest, body).model  # checks what the gateway relies on; the rest is relayed
    streaming = body.get("stream") is True
    base = (state.settings.llm.base_url or DEFAULT_BASE_URL).rstrip("/")
    url = base + "/v1/messages"
    headers = _upstream_headers(request, state)
    # In pure-sidecar mode the key is the client's: its 401/403 is the client's problem, not an outage.
    client_credentials = (not _configured_key(state) and not state.api_keys
                          and ("x-api-key" in headers or "Authorization" in headers))
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
        per_read = state.guards[guard_name].config.attempt_timeout_s or state.guards[guard_name].config.timeout_s

        async def attempt(payload: bytes = payload, per_read: float = per_read) -> Any:
            try:
                # sock_read bounds the gaps of a stream after the guard has handed it over.
                resp = await session.post(url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=5, sock_read=per_read))
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"connection to the LLM failed: {exc!r}", status=None) from exc
            if resp.status >= 400:
                text = await resp.text()
                resp.release()
                if client_credentials and resp.status in (401, 403):
                    raise UpstreamError(text[:300], status=resp.status, retryable=False, caller_fault=True)
                raise error_for_status(resp.status, text[:300], resp.headers)
            if streaming:
                return resp
            try:  # a whole JSON answer is read inside the attempt: the guard's timeout covers it all
                return resp, await resp.read()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"LLM answer broke off: {exc!r}", status=None) from exc
            finally:
                resp.release()

        try:
            upstream = await state.guards[guard_name].call(attempt, deadline, reserve_s=0.0)
        except DependencyUnavailable as exc:
            if exc.caller_fault:  # the client's own bad request or key: relay it, don't degrade
                status = exc.status or 400
                type_ = {401: "authentication_error", 403: "permission_error"}.get(status, "invalid_request_error")
                return _anthropic_error(status, type_, exc.detail or str(exc), {"X-Request-Id": request[REQUEST_ID]})
            degradations.append(contract.degradation(guard_name, exc.reason, model=rung_model))
            state.telemetry.degradation(guard_name, exc.reason.value)
            last = exc
            continue
        if streaming:
            return await _relay(request, upstream, degradations, deadline)
        resp, data = upstream
        out = web.Response(status=resp.status, body=data,
                           headers={k: v for k, v in resp.headers.items() if k.lower() not in _HOP})
        out.headers.update(_rag_headers(request, degradations))
        return out

    headers_out = contract.headers(Mode.UNAVAILABLE, degraded=True, request_id=request[REQUEST_ID],
                                   degradations=degradations,
                                   retry_after_s=last.retry_after_s if last and last.retry_after_s else 5)
    if last is not None and last.reason is Reason.RATE_LIMITED:
        return _anthropic_error(429, "rate_limit_error", "upstream rate limited; retry later", headers_out)
    return _anthropic_error(529, "overloaded_error",
                            "the LLM is unavailable (" + ", ".join(d["reason"] for d in degradations) + ")",
                            headers_out)


def _configured_key(state: AppState) -> bool:
    key = state.settings.llm.api_key
    return key is not None and bool(key.get_secret_value())


def _rag_headers(request: web.Request, degradations: list[dict[str, Any]]) -> dict[str, str]:
    return contract.headers(Mode.FALLBACK_MODEL if degradations else Mode.FULL, degraded=bool(degradations),
                            request_id=request[REQUEST_ID], degradations=degradations)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, degradations: list[dict[str, Any]],
                 deadline: Any) -> web.StreamResponse:
    """Stream the upstream's SSE bytes through, under the request's deadline.

    A stream that breaks or outlives the deadline after its first byte went out is passed on *as broken*
    (the connection is aborted, so the client's SDK raises on the incomplete stream) — never as a clean end.
    """
    out = web.StreamResponse(status=upstream.status)
    for k, v in upstream.headers.items():
        if k.lower() not in _HOP:
            out.headers[k] = v
    out.headers.update(_rag_headers(request, degradations))
    try:
        await out.prepare(request)
        request[STARTED_RESPONSE] = out
        async with asyncio.timeout(deadline.remaining()):
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
    except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
        reason = contract.Reason.TIMEOUT if isinstance(exc, TimeoutError) else contract.Reason.STREAM_CUT
        request.app[STATE].telemetry.degradation(Component.LLM, reason)
        log.warning("LLM stream broke after it started; aborting the client connection",
                    extra={"event": "llm_stream_broken", "reason": reason})
        if request.transport is not None:
            request.transport.abort()
        return out
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
