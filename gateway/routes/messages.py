"""/v1/messages, /v1/messages/count_tokens, /v1/models — an Anthropic-compatible gateway, so a bot only
sets ANTHROPIC_BASE_URL and keeps its SDK.

The request goes to the models of :meth:`ModelRouter.chain` in turn (the requested model, then its
fallbacks), each under its own guard (timeout, retries with Retry-After, breaker, bulkhead):

- an answer from a fallback is labelled ``X-RAG-Mode: fallback_model``, ``X-RAG-Degraded: true``,
  ``X-RAG-Degradations`` (JSON); its body's ``model`` names the model that answered;
- an error caused by the request (400, 404 model, 413, the client's own key refused) is relayed
  verbatim — status, body, ``request-id`` — and never falls back, except a 400 "prompt is too long",
  which goes to ``llm.context_window_fallbacks`` when one is configured;
- a fallback that refuses an assistant prefill is replayed once without it (labelled ``prefill_dropped``);
- when every model failed: the last upstream error verbatim, or an Anthropic-shaped 529
  ``overloaded_error`` (429 ``rate_limit_error`` when rate limited); ``Retry-After`` capped at
  ``llm.max_retry_after_s``.

Streams: events are parsed as they pass. Until the first content delta (``llm.stream_buffer:
first_content``) or the whole answer (``full``) nothing is sent, so a break, stall, malformed event or
error event fails over unseen. After content went out a break ends the stream with an Anthropic
``event: error`` (never a clean truncated end) and is counted. A stream holds one of
``llm.max_streams`` slots for its whole life; past that it gets 529 at once.

Timeouts: connect (``llm.connect_timeout_s``); first content (``llm.first_token_timeout_s``, and the
request deadline: ``llm.request_timeout_s`` unless the client's ``X-Request-Timeout`` is shorter);
gaps between events (``llm.idle_timeout_s``); whole stream (``llm.stream_max_s``).

Credentials: the model's key (``llm.endpoints[model].api_key``, else ``llm.api_key``) is used upstream
when set; otherwise the client's own ``x-api-key`` / ``Authorization`` is forwarded (a pure sidecar).
Gateway API keys authenticate the client to the sidecar and are never forwarded.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable
from functools import partial
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway import connguard, contract
from gateway.contract import CLIENT_SIDE_OUTCOMES, Mode, StreamOutcome
from gateway.errors import APIError
from gateway.http_input import read_json_raw, validate
from gateway.llm_router import PRIMARY, ModelRouter, Target
from gateway.state import DEADLINE, REQUEST_ID, STARTED_RESPONSE, STATE, TRACE, AppState
from gateway.tracing import outgoing_headers
from gateway.upstreams.anthropic_http import AnthropicHTTP, OpenStream, UpstreamReply
from resilience import Bulkhead, BulkheadFull, DependencyUnavailable, Reason
from resilience.watchdog import Timeout, Watchdog, slack_for, watchdog

log = logging.getLogger("rag_sidecar.messages")
# Headers forwarded from the client (auth is handled separately), each once, under these names.
_FORWARD = ("anthropic-version", "anthropic-beta", "content-type", "accept")
_LIST_HEADERS = frozenset({"anthropic-beta", "accept"})  # comma lists: repeated lines join (RFC 9110 5.3)
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


class MessagesRequest(BaseModel):
    """The part of an Anthropic Messages request the gateway itself reads; every other field is relayed
    unchanged and judged by the upstream (its 400 comes back as-is)."""

    # Required by Anthropic (the upstream enforces them; documented so generated requests are realistic).
    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["model", "messages", "max_tokens"]})
    model: StrictStr = Field(min_length=1, description="the model asked for; its fallback chain is llm.fallbacks")
    messages: Any = Field(None, description="Anthropic messages (required and validated upstream)",
                          json_schema_extra={"type": "array", "minItems": 1, "items": {
                              "type": "object", "required": ["role", "content"],
                              "properties": {"role": {"enum": ["user", "assistant"]},
                                             "content": {"type": "string", "minLength": 1}}}})
    max_tokens: Any = Field(None, description="Anthropic's output cap (required and validated upstream)",
                            json_schema_extra={"type": "integer", "minimum": 1, "maximum": 4096})
    stream: Any = Field(False, description="true: server-sent events relayed as they come")


@dataclass(slots=True)
class MessagesTrace:
    """What happened to one pass-through request; read by the access log, metrics and spans."""

    requested_model: str | None = None
    model: str | None = None  # the model that answered
    degradations: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: Mode = Mode.FULL
    stream_outcome: StreamOutcome | None = None
    ttft_ms: float | None = None
    cache: str = "off"
    retriever: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def degraded(self) -> bool:
        return contract.is_degraded(self.mode, self.degradations)

    def degrade(self, component: str, reason: str, model: str, **extra: Any) -> None:
        self.degradations.append(contract.degradation(component, reason, model=model, **extra))

    def log_fields(self) -> dict[str, Any]:
        return {"requested_model": self.requested_model, "ttft_ms": self.ttft_ms,
                "stream_outcome": self.stream_outcome}


class MessagesGateway:
    """The route's long-lived parts: HTTP client, router, stream slots."""

    def __init__(self, state: AppState, router: ModelRouter) -> None:
        cfg = state.settings.llm
        self.state = state
        self.config = cfg
        self.router = router
        self.http = AnthropicHTTP(connect_s=cfg.connect_timeout_s, idle_s=cfg.idle_timeout_s, transport=cfg.transport)
        connections = connguard.fd_bounded(state.settings.server.max_connections)
        slots = stream_slots(cfg.max_streams, connections)
        if slots < cfg.max_streams:
            log.warning("fewer stream slots than llm.max_streams: an open stream holds a connection, and the "
                        "connection cap keeps a tenth for everything else",
                        extra={"event": "stream_slots_lowered", "max_streams": cfg.max_streams, "slots": slots,
                               "max_connections": connections})
        self.streams = Bulkhead(slots, 0.0, name="llm_streams")

    def upstream_headers(self, request: web.Request, target: Target) -> tuple[dict[str, str], bool]:
        """Headers for ``target`` and whether the credentials are the client's own."""
        # Looked up by name (~0.4 µs), not by walking every request header (~1.7 µs for an SDK's 17). One line
        # per name whatever case or how often the client sent it, so an "Anthropic-Version" never rides beside
        # the default: repeated list headers (anthropic-beta, accept) joined by ", " (RFC 9110 5.3), of a
        # single-value one (anthropic-version, content-type) the last line (a joined "2023-06-01, 2023-06-01"
        # is no version).
        incoming = request.headers
        headers: dict[str, str] = {}
        for name in _FORWARD:
            values = incoming.getall(name, None)
            if values is not None:
                headers[name] = values[-1] if len(values) == 1 or name not in _LIST_HEADERS else ", ".join(values)
        headers.setdefault("anthropic-version", "2023-06-01")
        headers["X-Request-Id"] = request[REQUEST_ID]
        headers.update(outgoing_headers())  # the request span's traceparent (the client's own is not forwarded)
        key = target.api_key or _secret(self.config.api_key)
        if key:
            headers["x-api-key"] = key
            return headers, False
        if not self.state.api_keys:  # pure sidecar: the client's own key goes upstream
            for name in ("x-api-key", "Authorization"):
                if name in request.headers:
                    headers[name] = request.headers[name]
            return headers, "x-api-key" in headers or "Authorization" in headers
        return headers, False

    def retry_after(self, seconds: float | None) -> str:
        """Whole seconds for a client, at least 1, capped by ``llm.max_retry_after_s``."""
        cap = self.config.max_retry_after_s
        return contract.retry_after(min(cap, seconds if seconds is not None else cap))


def stream_slots(max_streams: int, max_connections: int) -> int:
    """Streams this gateway keeps open at once: ``llm.max_streams``, but never more than nine tenths of the
    connection cap. A stream holds its client connection for its whole life; with as many slots as
    connections, open streams alone would fill the cap and every other client (a /v1/query, a JSON
    /v1/messages, a health probe) would be refused at connect, and the next stream would get a TCP reset
    instead of an Anthropic 529 with ``Retry-After``."""
    return max(1, min(max_streams, max_connections - max(1, max_connections // 10)))


def _secret(value: Any) -> str | None:
    return value.get_secret_value() or None if value is not None else None


GATEWAY: web.AppKey[MessagesGateway] = web.AppKey("messages_gateway", MessagesGateway)


def anthropic_error(status: int, type_: str, message: str, headers: dict[str, str]) -> web.Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def _rag_headers(request: web.Request, trace: MessagesTrace) -> dict[str, str]:
    return contract.headers(trace.mode, degraded=trace.degraded, request_id=request[REQUEST_ID],
                            degradations=trace.degradations)


def _relay_reply(gw: MessagesGateway, request: web.Request, reply: UpstreamReply,
                 trace: MessagesTrace) -> web.Response:
    """An upstream error answer, verbatim: status, body, request-id (Retry-After capped)."""
    headers = dict(reply.headers)
    status = reply.status if reply.status is not None else 502  # an error answer always has one
    if "retry-after" in headers or "retry-after-ms" in headers or status in (429, 529) or status >= 500:
        headers.pop("retry-after-ms", None)
        headers["retry-after"] = gw.retry_after(reply.retry_after_s)
    headers.update(_rag_headers(request, trace))
    resp = web.Response(status=status, body=reply.body, headers=headers)
    resp.content_type = reply.content_type.split(";")[0].strip() or "application/json"
    return resp


def _without_prefill(body: dict[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > 1 and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant":
        return {**body, "messages": messages[:-1]}
    return None


def requested_model(body: Any) -> str:
    """The body's ``model``, checked as :class:`MessagesRequest` checks it (the one field the gateway relies on;
    the rest is relayed). Raises APIError 422 as :func:`validate` words it. A non-empty str is all the model
    accepts, so that case skips pydantic (which copies every field of the body: ~1.2 µs of a request); ASCII
    only, as pydantic refuses a lone surrogate (json.loads lets ``"\\ud800"`` through)."""
    model = body.get("model") if type(body) is dict else None
    if type(model) is str and model and model.isascii():
        return model
    return validate(MessagesRequest, body).model  # refuses it, naming the field as /openapi.json's schema


async def messages(request: web.Request) -> web.StreamResponse:
    state: AppState = request.app[STATE]
    gw = request.app[GATEWAY]
    body, raw = await read_json_raw(request, gw.config.max_body_bytes)  # long prompts: llm.max_body_bytes
    model = requested_model(body)
    trace = MessagesTrace(requested_model=model)
    request[TRACE] = trace
    if body.get("stream") is not True:
        return await _serve(gw, request, body, raw, trace, streaming=False)
    try:
        if not gw.streams.try_acquire():  # the free slot of nearly every stream without a coroutine
            await gw.streams.acquire(max_wait_s=0.0)
    except BulkheadFull:
        trace.mode = Mode.UNAVAILABLE
        trace.degrade(PRIMARY, Reason.SHED.value, model)
        state.telemetry.degradation(PRIMARY, Reason.SHED.value)
        return anthropic_error(529, "overloaded_error",
                               f"{gw.streams.max_concurrent} streams already open on this gateway; retry shortly",
                               {"Retry-After": "1", **_rag_headers(request, trace)})
    try:
        return await _serve(gw, request, body, raw, trace, streaming=True)
    finally:
        gw.streams.release()


async def _serve(gw: MessagesGateway, request: web.Request, body: dict[str, Any], raw: bytes,
                 trace: MessagesTrace, *, streaming: bool) -> web.StreamResponse:
    state = gw.state
    cfg = gw.config
    deadline = request[DEADLINE]
    model = body["model"]
    queue = gw.router.chain(model)
    context_tried = False
    no_prefill: set[str] = set()
    last: DependencyUnavailable | None = None
    stage_s = cfg.first_token_timeout_s if streaming else cfg.request_timeout_s
    whole = cfg.stream_buffer == "full"
    while queue:
        target = queue.pop(0)
        headers, client_key = gw.upstream_headers(request, target)
        if target.model == model and target.model not in no_prefill:
            payload = raw  # the client's bytes, untouched
        else:
            sent = _without_prefill(body) if target.model in no_prefill else None
            payload = json.dumps({**(sent or body), "model": target.model}).encode()
        url = target.base_url + "/v1/messages"
        t0 = time.perf_counter()
        try:
            if streaming:
                result: Any = await target.guard.call(
                    partial(gw.http.open_stream, url, payload, headers, whole=whole, client_key=client_key),
                    deadline, stage_timeout_s=stage_s)
            else:
                result = await target.guard.call(
                    partial(gw.http.request_json, "POST", url, payload, headers, client_key=client_key),
                    deadline, stage_timeout_s=stage_s)
        except DependencyUnavailable as exc:
            reply = exc.__cause__ if isinstance(exc.__cause__, UpstreamReply) else None
            if exc.caller_fault and reply is not None:
                if target.component == PRIMARY:
                    if reply.prompt_too_long and not context_tried:
                        context_tried = True
                        larger = gw.router.context_chain(model)
                        if larger:
                            trace.degrade(PRIMARY, "context_window", target.model)
                            state.telemetry.degradation(PRIMARY, "context_window")
                            queue = larger
                            continue
                    return _relay_reply(gw, request, reply, trace)  # the client's own mistake: verbatim
                if reply.prefill_rejected and target.model not in no_prefill and _without_prefill(body):
                    no_prefill.add(target.model)
                    trace.degrade(target.component, "prefill_dropped", target.model)
                    state.telemetry.degradation(target.component, "prefill_dropped")
                    queue.insert(0, target)
                    continue
            trace.degrade(target.component, exc.reason.value, target.model)
            state.telemetry.degradation(target.component, exc.reason.value)
            last = exc
            continue
        trace.mode = Mode.FALLBACK_MODEL if target.model != model else Mode.FULL
        trace.model = target.model
        if not streaming:
            trace.timings_ms["upstream"] = round((time.perf_counter() - t0) * 1e3, 3)
            relayed = {k: v for k, v in result.headers.items() if k.lower() not in _HOP}
            relayed.update(_rag_headers(request, trace))
            return web.Response(status=result.status, body=result.body, headers=relayed)
        trace.ttft_ms = round((time.perf_counter() - trace.started) * 1e3, 3)
        state.telemetry.llm_first_token(target.model, trace.ttft_ms)
        return await _relay(gw, request, result, trace, target)
    return _exhausted(gw, request, trace, last)


def _exhausted(gw: MessagesGateway, request: web.Request, trace: MessagesTrace,
               last: DependencyUnavailable | None) -> web.Response:
    trace.mode = Mode.UNAVAILABLE
    reply = last.__cause__ if last is not None and isinstance(last.__cause__, UpstreamReply) else None
    if reply is not None:
        return _relay_reply(gw, request, reply, trace)
    headers = {"Retry-After": gw.retry_after(last.retry_after_s if last else None), **_rag_headers(request, trace)}
    reasons = ", ".join(f"{d['model']}: {d['reason']}" for d in trace.degradations)
    if last is not None and last.reason is Reason.RATE_LIMITED:
        return anthropic_error(429, "rate_limit_error", f"every model is rate limited ({reasons})", headers)
    return anthropic_error(529, "overloaded_error", f"no model could answer ({reasons})", headers)


def _error_event(type_: str, message: str) -> bytes:
    data = json.dumps({"type": "error", "error": {"type": type_, "message": message}})
    return f"event: error\ndata: {data}\n\n".encode()


BLOCKED_S = 0.001  # a write longer than this waited for the client's socket to drain
CLIENT_SHARE = 0.1  # a stream past llm.stream_max_s is the client's when its waiting is at least this share


class ClientWatch:
    """How long the relay waits for a client that does not read, with one entry per stream on the loop's
    :class:`~resilience.watchdog.Watchdog` (like :class:`~gateway.upstreams.anthropic_http.IdleWatch` upstream;
    at most :func:`~resilience.watchdog.slack_for` late). :meth:`write` sends through it; when one
    write has waited ``limit_s`` for room in the client's socket the connection is aborted (a client that
    does not read cannot read an ``event: error`` either) and :attr:`fired` is set. :attr:`waited_s` is the
    time spent in writes that waited for the client (over :data:`BLOCKED_S`; a write that only copies bytes
    into the socket is our CPU, not the client's): the client's share of the stream's length. A write after
    the abort raises ConnectionResetError. ``dog``: the loop's watchdog when the caller has it at hand."""

    __slots__ = ("_dog", "_loop", "_limit_s", "_slack_s", "_transport", "since", "waited_s", "fired")

    def __init__(self, transport: asyncio.Transport | None, limit_s: float, dog: Watchdog | None = None) -> None:
        dog = self._dog = dog if dog is not None else watchdog()
        self._loop = dog.loop
        self._limit_s = limit_s
        self._slack_s = slack_for(limit_s)
        self._transport = transport
        self.since: float | None = None  # when the write in progress started
        self.waited_s = 0.0
        self.fired = False
        dog.arm_at(self, self._loop.time() + limit_s, self._slack_s)

    async def write(self, out: web.StreamResponse, data: bytes) -> None:
        await self._send(out.write(data), "the stream")

    async def write_eof(self, out: web.StreamResponse, data: bytes = b"") -> None:
        """Send ``data`` (the last bytes, with the end of the body: one send) and end the body."""
        await self._send(out.write_eof(data), "the end of the stream")  # the last bytes must reach it too

    async def _send(self, send: Awaitable[None], what: str) -> None:
        """Await one send to the client, timing it; raise once the watch gave up on the client."""
        self.since = t0 = self._loop.time()
        try:
            await send
        finally:
            self.since = None
            if (waited := self._loop.time() - t0) > BLOCKED_S:
                self.waited_s += waited
        if self.fired:  # aborted while this send waited: aiohttp's drain returns quietly
            raise ConnectionResetError(f"the client did not read {what} (llm.client_idle_timeout_s)")

    def expire(self) -> None:
        now = self._loop.time()
        since = self.since
        if since is None or now - since < self._limit_s:
            self._dog.arm_at(self, now + self._limit_s if since is None else since + self._limit_s, self._slack_s)
            return
        self.abort()

    def abort(self) -> None:
        """Give up on the client: reset its connection. SO_LINGER 0 makes the kernel drop what the client
        left unread (up to megabytes per socket) at once instead of sending it to a reader that is not there."""
        self.fired = True
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()

    def cancel(self) -> None:
        self._dog.disarm(self)


class _CoalescedStreamResponse(web.StreamResponse):
    """A stream whose headers leave with its first bytes (one send, not two): what aiohttp's
    ``web.Response`` does for a body. :func:`_relay` writes what was held right after ``prepare``, so no
    header waits; an aiohttp without the switch sends them at ``prepare``, as before."""

    _send_headers_immediately = False


async def _relay(gw: MessagesGateway, request: web.Request, opened: OpenStream, trace: MessagesTrace,
                 target: Target) -> web.StreamResponse:
    """Send what was held, then pass the stream through, judging each event; end it honestly. A client
    that reads slower than the upstream sends is its own outcome (``client_slow``), never the model's.

    The last bytes go out with the end of the body (``write_eof(last)``): a stream that had fully
    arrived while it was held costs one send for headers, events and end."""
    upstream = opened.response
    events = opened.events
    out = _CoalescedStreamResponse(status=upstream.status)
    for k, v in upstream.headers.items():
        if k.lower() not in _HOP:
            out.headers[k] = v
    out.headers.update(_rag_headers(request, trace))
    outcome: StreamOutcome = StreamOutcome.COMPLETE
    client = ClientWatch(request.transport, gw.config.client_idle_timeout_s,
                         opened.idle.dog if opened.idle is not None else None)
    try:
        await out.prepare(request)
        request[STARTED_RESPONSE] = out
        last = b"".join(opened.held) if len(opened.held) != 1 else opened.held[0]
        if not events.stopped:
            idle = opened.idle
            if idle is not None:
                idle.arm()  # from here on the upstream's gaps are timed, even while the client is written to
            await client.write(out, last)
            last = b""
            limit = gw.config.stream_max_s - (time.perf_counter() - trace.started)
            timer = Timeout(limit)
            try:
                async with timer:
                    content = upstream.content
                    while True:
                        chunk = await content.readany()
                        if idle is not None:
                            idle.touch(len(chunk))
                        if not chunk:
                            break
                        data = events.feed(chunk)
                        if events.stopped:
                            last = data  # goes out with the end of the body
                            break
                        if data:
                            await client.write(out, data)
                        if events.malformed or events.error is not None:
                            break
            except TimeoutError:
                if not timer.expired():
                    outcome = StreamOutcome.STALLED
                elif (client.waited_s >= CLIENT_SHARE * gw.config.stream_max_s
                      and time.perf_counter() - trace.started - client.waited_s < gw.config.stream_max_s):
                    # Without the client's backpressure it would have fit, and that backpressure was a real
                    # share of the limit (not the few ms any long stream spends in writes).
                    outcome = StreamOutcome.CLIENT_SLOW
                else:
                    outcome = StreamOutcome.TIMEOUT
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - aiohttp payload/connection errors: a cut stream
                log.debug("upstream stream cut", extra={"event": "llm_stream_cut", "error": type(exc).__name__})
                outcome = StreamOutcome.CUT
            if outcome == StreamOutcome.COMPLETE:
                if events.malformed:
                    outcome = StreamOutcome.MALFORMED
                elif events.error is not None:
                    outcome = StreamOutcome.ERROR  # the upstream's own `event: error` was forwarded as-is
                elif not events.stopped:
                    outcome = StreamOutcome.NO_STOP
        if outcome is StreamOutcome.CLIENT_SLOW:
            client.abort()  # it is not reading: an error event would only wait in its socket
        else:
            if outcome not in (StreamOutcome.COMPLETE, StreamOutcome.ERROR):
                kind = "timeout_error" if outcome in (StreamOutcome.STALLED, StreamOutcome.TIMEOUT) else "api_error"
                last += _error_event(kind, f"the upstream stream of {target.model} broke after content was "
                                           f"sent ({outcome}); the answer is incomplete")
            await client.write_eof(out, last)
    except ConnectionResetError:
        if not client.fired:
            outcome = StreamOutcome.CLIENT_GONE
            raise
        outcome = StreamOutcome.CLIENT_SLOW  # our own reset: an expected end, not an error to log
    except asyncio.CancelledError:
        outcome = StreamOutcome.CLIENT_SLOW if client.fired else StreamOutcome.CLIENT_GONE
        raise
    finally:
        client.cancel()
        opened.finish(reuse=outcome == StreamOutcome.COMPLETE)
        trace.stream_outcome = outcome
        trace.timings_ms["stream"] = round((time.perf_counter() - trace.started) * 1e3, 3)
        trace.timings_ms["client_wait"] = round(client.waited_s * 1e3, 3)  # of it, waiting for the client to read
        gw.state.telemetry.llm_stream_outcome(target.model, outcome)
        if outcome is StreamOutcome.CLIENT_SLOW:
            log.warning("client read the LLM stream too slowly; its connection was closed",
                        extra={"event": "llm_stream_client_slow", "model": target.model,
                               "client_wait_s": round(client.waited_s, 3)})
        elif outcome not in CLIENT_SIDE_OUTCOMES and outcome is not StreamOutcome.COMPLETE:
            trace.degrade(target.component, f"stream_{outcome}", target.model)
            gw.state.telemetry.degradation(target.component, f"stream_{outcome}")
            log.warning("LLM stream broke after content was sent; ended with an error event",
                        extra={"event": "llm_stream_broken", "outcome": outcome, "model": target.model})
    return out


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens`` under the model's guard; no fallback (a count is per model)."""
    gw = request.app[GATEWAY]
    body, raw = await read_json_raw(request, gw.config.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(422, "invalid_value", "model must be a non-empty string", field="model")
    trace = MessagesTrace(requested_model=body["model"])
    request[TRACE] = trace
    target = gw.router.target(body["model"])
    headers, client_key = gw.upstream_headers(request, target)
    return await _guarded_json(gw, request, trace, target.guard, "POST", target.base_url + "/v1/messages/count_tokens",
                               raw, headers, client_key, target.model)


async def models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` (query string passed on) under its own endpoint guard, never a model's."""
    gw = request.app[GATEWAY]
    trace = MessagesTrace()
    request[TRACE] = trace
    target = gw.router.target(gw.config.model)
    headers, client_key = gw.upstream_headers(request, target)
    url = gw.router.default_base + "/v1/models" + (f"?{request.query_string}" if request.query_string else "")
    guard = gw.router.endpoint_guard(gw.router.default_base, "models")
    return await _guarded_json(gw, request, trace, guard, "GET", url, None, headers, client_key, None)


async def _guarded_json(gw: MessagesGateway, request: web.Request, trace: MessagesTrace, guard: Any, method: str,
                        url: str, payload: bytes | None, headers: dict[str, str], client_key: bool,
                        model: str | None) -> web.StreamResponse:
    try:
        answer = await guard.call(lambda: gw.http.request_json(method, url, payload, headers, client_key=client_key,
                                                               expect=None),
                                  request[DEADLINE], stage_timeout_s=gw.config.request_timeout_s)
    except DependencyUnavailable as exc:
        reply = exc.__cause__ if isinstance(exc.__cause__, UpstreamReply) else None
        if exc.caller_fault and reply is not None:
            return _relay_reply(gw, request, reply, trace)
        trace.degrade(PRIMARY, exc.reason.value, model or guard.name)
        gw.state.telemetry.degradation(PRIMARY, exc.reason.value)
        return _exhausted(gw, request, trace, exc)
    trace.model = model
    out = web.Response(status=answer.status, body=answer.body,
                       headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP})
    out.headers.update(_rag_headers(request, trace))
    return out


async def _gateway_ctx(app: web.Application) -> Any:
    yield
    await app[GATEWAY].http.close()


def setup(app: web.Application) -> None:
    app[GATEWAY] = MessagesGateway(app[STATE], app[STATE].llm_router)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.cleanup_ctx.append(_gateway_ctx)
