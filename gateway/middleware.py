"""The middleware chain, in the order a request meets it (like Envoy's filter chain):

    request_id → access_log → drain → errors → auth → rate_limit → deadline → handler

Body size/type/validation happen in the handlers (they know the schema); everything here is
route-agnostic and does one thing each.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import os
import re
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from gateway.cors import is_preflight
from gateway.errors import APIError, error_response
from gateway.logs import log_event, request_id_var
from gateway.shutdown import drain
from gateway.state import (
    ANSWER_TEXT,
    CLIENT_GONE,
    CLIENT_ID,
    DEADLINE,
    QUERY_TEXT,
    REQUEST_ID,
    STARTED_RESPONSE,
    STATE,
    TRACE,
    AppState,
)
from gateway.telemetry import request_retries
from gateway.tracing import log_fields, mark_error, span_ids
from gateway.upstreams.fair import current_client
from resilience import Deadline

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("rag_sidecar.access")
errlog = logging.getLogger("rag_sidecar.errors")

_RID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Routes that skip auth, rate limiting and the access log's INFO level (probes are frequent).
PROBES = frozenset({"/livez", "/readyz", "/metrics"})
# The Anthropic-compatible routes: their deadline is llm.request_timeout_s (the client's shorter one wins).
LLM_PASS_THROUGH = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/models"})


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Honour a sane incoming X-Request-Id, else mint one; echo it on every response."""
    rid = request.headers.get("X-Request-Id")
    if rid is None or not _RID_OK.match(rid):
        rid = os.urandom(16).hex()  # 32 hex digits, as uuid4().hex was, at a quarter of its cost
    request[REQUEST_ID] = rid
    token = request_id_var.set(rid)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        request_id_var.reset(token)
    if not resp.prepared:
        resp.headers["X-Request-Id"] = rid
    return resp


def told_mode(resp: web.StreamResponse | None, trace: Any) -> tuple[str | None, bool]:
    """(mode, degraded) as the client was told: the ``X-RAG-Mode``/``X-RAG-Degraded`` headers when the
    response has them (JSON answers, the 503 of an exhausted ladder, /v1/messages), else the trace (an
    SSE answer's contract travels in its ``done`` event); (None, False) when no pipeline ran. Metrics and
    the access log use this, so a 503 is ``unavailable`` there exactly as in its body."""
    header = resp.headers.get("X-RAG-Mode") if resp is not None else None
    if header:
        return header, resp.headers.get("X-RAG-Degraded") == "true"  # type: ignore[union-attr]
    if trace is not None:
        return trace.mode, bool(trace.degraded)
    return None, False


def _span_attributes(sp: Any, request: web.Request, state: AppState, status: int, retries: dict[str, int]) -> None:
    """The request span's outcome: status (ERROR on a 5xx), contract labels, retries, breakers, model."""
    sp.set_attribute("http.status_code", status)
    mark_error(sp, status)
    trace = request.get(TRACE)
    if trace is not None:
        sp.set_attribute("rag.mode", trace.mode)
        sp.set_attribute("rag.degraded", trace.degraded)
        sp.set_attribute("rag.degradations", [f"{d['component']}:{d['reason']}" for d in trace.degradations])
        for key, value in (("rag.model", trace.model), ("rag.retriever", trace.retriever), ("rag.cache", trace.cache)):
            if value is not None:
                sp.set_attribute(key, value)
        for key, value in (trace.log_fields() if hasattr(trace, "log_fields") else {}).items():
            if value is not None:  # /v1/messages: requested model, ttft_ms, stream_outcome
                sp.set_attribute(f"rag.{key}", value)
    for dependency, n in retries.items():
        sp.set_attribute(f"rag.retries.{dependency}", n)
    for dependency, breaker in state.telemetry.breakers.items():
        sp.set_attribute(f"rag.breaker.{dependency}", breaker)


_NO_SPAN = contextlib.nullcontext()  # reusable: the request span when tracing is off


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One JSON line per request with every decision the pipeline took (see Trace)."""
    state: AppState = request.app[STATE]
    t0 = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource else request.path
    telemetry = state.telemetry
    telemetry.request_started(route)
    retries: dict[str, int] = {}
    retries_token = request_retries.set(retries)
    status = 500
    resp: web.StreamResponse | None = None
    ids: tuple[int, int] | None = None
    tracer = state.tracer
    span = tracer.server_span("rag.request", request.headers, **{
        "http.route": route, "http.method": request.method,
        "rag.request_id": request.get(REQUEST_ID)}) if tracer.enabled else _NO_SPAN
    try:
        with span as sp:
            ids = span_ids(sp)  # the access line below is written after the span ends: keep its ids
            try:
                resp = await handler(request)
                status = 499 if CLIENT_GONE in request else resp.status
            finally:
                if sp is not None:
                    _span_attributes(sp, request, state, status, retries)
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The client went away (nginx's 499: not a server error, not a 5xx alert) — unless the shutdown
        # grace ran out: that cut is ours, a 503.
        status = 503 if state.drain.was_cut(asyncio.current_task()) else 499
        raise
    finally:
        request_retries.reset(retries_token)
        ms = (time.perf_counter() - t0) * 1e3
        trace = request.get(TRACE)
        mode, degraded = told_mode(resp, trace)
        telemetry.request_finished(route, status, mode, degraded, ms)
        path = request.path
        level = logging.DEBUG if path in PROBES and status < 500 else logging.INFO
        if log.isEnabledFor(level):  # the line is built only when it will be written
            # Dict displays, not update(key=…) calls: ~0.3 µs less per line.
            fields: dict[str, Any] = {
                "event": "request", "method": request.method, "route": route, "path": path, "status": status,
                "duration_ms": round(ms, 3), "client": request.get(CLIENT_ID)}
            if ids is not None:
                fields = {**log_fields(ids), **fields}
            if trace is not None:
                # Copies: the line is built up to a millisecond later (log_event), and a task the request
                # started may still record into these.
                fields |= {"mode": mode, "degraded": degraded, "degradations": list(trace.degradations),
                           "timings_ms": dict(trace.timings_ms), "cache": trace.cache, "retriever": trace.retriever,
                           "model": trace.model, "retries": dict(retries)}
                if hasattr(trace, "log_fields"):
                    fields |= trace.log_fields()
            if state.settings.logging.log_prompts and QUERY_TEXT in request:
                fields["query"] = request[QUERY_TEXT]
                fields["answer"] = request.get(ANSWER_TEXT)
            log_event(log, level, "request", fields)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON. Unexpected exceptions become a 500 without internals."""
    try:
        return await handler(request)
    except APIError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        type_ = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return error_response(exc.status, type_, exc.reason, headers=headers)
    except Exception as exc:  # noqa: BLE001 - last line of defence; logged with the stack, client gets no internals
        started = request.get(STARTED_RESPONSE)
        if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
            # A write to a client that went away (aiohttp's ClientConnectionResetError, a ConnectionResetError):
            # the client's end, a 499 like a cancelled handler, not an error with a stack trace for anyone to
            # chase. Whatever is returned cannot reach it (aiohttp ignores that write failing). Only a reset:
            # another ConnectionError (a refused connect of ours) stays a 500 even when the client has left.
            request[CLIENT_GONE] = True
            return started if started is not None else web.Response(status=499)
        errlog.exception("unhandled error", extra={"event": "unhandled_error", "path": request.path})
        if started is not None:
            # Headers (and maybe part of a stream) are out: a second response would corrupt the body, so
            # break the connection — the client sees an incomplete stream, never a clean end.
            if request.transport is not None:
                request.transport.abort()
            return started
        return error_response(500, "internal_error", "internal error; see the gateway log for this request id",
                              request_id=request.get(REQUEST_ID))


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _as_bytes(text: str) -> bytes:
    # Header values arrive as str with undecodable bytes kept as surrogates: never a 500 here.
    return text.encode("utf-8", "surrogateescape")


def match_key(presented: str, keys: dict[str, str]) -> str | None:
    """The label of the configured key equal to ``presented``, compared in constant time against every
    key (no early exit, so the timing says nothing about which key or how many bytes matched)."""
    found = None
    given = _as_bytes(presented)
    for key, label in keys.items():
        if hmac.compare_digest(given, _as_bytes(key)):
            found = label
    return found


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def peer_identity(request: web.Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                  header: str) -> str:
    """``ip:<address>`` of the client: the peer, or, when the peer is a trusted proxy, the rightmost
    address of ``header`` that is not itself a trusted proxy (nginx's ``real_ip_recursive``)."""
    peer = request.remote or "unknown"
    if not trusted:
        return f"ip:{peer}"

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not is_trusted(peer):
        return f"ip:{peer}"
    client = peer
    for hop in reversed([h.strip() for h in request.headers.get(header, "").split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage from the client: the last address we could vouch for stands
        client = hop
        if not is_trusted(hop):
            break
    return f"ip:{client}"


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API keys on /v1/* when configured (Bearer or x-api-key). /admin/* has its own token check.

    The client's identity (rate-limit bucket, fair embedder queue, logs) is its API key, else its address:
    never a header the client chooses (X-Client-Id let anyone rotate past a limit or starve a victim).
    """
    state: AppState = request.app[STATE]
    if is_preflight(request):  # aiohttp-cors answers it; a browser never sends credentials on a preflight
        return await handler(request)
    keys = state.api_keys
    presented = _presented_key(request)
    label = match_key(presented, keys) if presented is not None and keys else None
    if request.path.startswith("/v1/") and keys and label is None:
        raise APIError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer … or x-api-key)",
                       headers={"WWW-Authenticate": "Bearer"})
    if label is not None:
        request[CLIENT_ID] = "key:" + label
    else:
        rl = state.settings.rate_limit
        request[CLIENT_ID] = peer_identity(request, _networks(tuple(rl.trusted_proxies)),
                                           rl.client_ip_header)
    current_client.set(request[CLIENT_ID])
    return await handler(request)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token bucket per client on /v1/*: 429 + Retry-After + RateLimit-* when empty."""
    state: AppState = request.app[STATE]
    limiter = state.rate_limiter
    if limiter is None or not request.path.startswith("/v1/") or is_preflight(request):
        return await handler(request)
    decision = await limiter.acquire(request[CLIENT_ID])
    headers = decision.headers()
    if not decision.allowed:
        state.telemetry.rate_limited(request.path)
        raise APIError(429, "rate_limited", "rate limit exceeded for this client; retry after the indicated delay",
                       headers=headers)
    resp = await handler(request)
    if not resp.prepared:
        resp.headers.update(headers)
    return resp


@web.middleware
async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One budget per request: config default, or X-Request-Timeout (seconds) within the max."""
    settings = request.app[STATE].settings
    server = settings.server
    raw = request.headers.get("X-Request-Timeout")
    budget, most = server.request_timeout_s, server.max_request_timeout_s
    llm_route = request.path in LLM_PASS_THROUGH
    if llm_route:  # a Claude answer takes minutes, not the RAG budget's seconds
        budget = most = settings.llm.request_timeout_s
    if raw is not None:
        try:
            budget = float(raw)
        except ValueError:
            raise APIError(400, "invalid_header", "X-Request-Timeout must be a number of seconds",
                           field="X-Request-Timeout") from None
        if llm_route and budget > most:
            budget = most  # the client's own timeout wins only when shorter
        if not 0 < budget <= most:
            raise APIError(400, "invalid_header", f"X-Request-Timeout must be in (0, {most:g}] seconds",
                           field="X-Request-Timeout")
    request[DEADLINE] = Deadline(budget)
    return await handler(request)


CHAIN = [request_id, access_log, drain, errors, auth, rate_limit, deadline]
