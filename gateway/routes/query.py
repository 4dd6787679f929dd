"""POST /v1/query and POST /v1/retrieve: validate, run the pipeline, render the response contract."""
from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from gateway import contract
from gateway.contract import Mode
from gateway.errors import APIError
from gateway.http_input import read_json
from gateway.pipeline import LadderExhausted, Pipeline, QueryRequest, QueryResult, Trace
from gateway.state import ANSWER_TEXT, DEADLINE, QUERY_TEXT, REQUEST_ID, STARTED_RESPONSE, STATE, TRACE, AppState
from resilience import Deadline

FilterValue = StrictStr | StrictInt | StrictFloat | StrictBool | list[StrictStr | StrictInt | StrictFloat]


class QueryBody(BaseModel):
    """POST /v1/query and /v1/retrieve. The limits that depend on the config (query length, top_k) are
    checked in :func:`parse_query_body` and written into /openapi.json from the running settings."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: StrictStr = Field(description="the question (whitespace-only is refused; cut to the embedder's window)",
                             json_schema_extra={"minLength": 1, "pattern": r"\S"})
    top_k: StrictInt | None = Field(None, description="chunks to retrieve (server.default_top_k when absent)",
                                    json_schema_extra={"minimum": 1})
    filters: dict[StrictStr, FilterValue] | None = Field(
        None, description="exact-match metadata filters (a list matches any of its values; integers fit 64 bits)",
        json_schema_extra={"propertyNames": {"minLength": 1, "pattern": r"\S"}})
    stream: StrictBool = Field(False, description="true: server-sent events (delta …, done)")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ERROR_TYPES = {"extra_forbidden": "unknown_field", "missing": "missing_field"}


def parse_query_body(data: Any, state: AppState) -> QueryBody:
    if not isinstance(data, dict):
        raise APIError(422, "invalid_type", "request body must be a JSON object")
    try:
        body = QueryBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"][:2] if err["loc"][:1] == ("filters",) else err["loc"]  # not the union member tried
        field = ".".join(str(p) for p in loc)
        type_ = _ERROR_TYPES.get(err["type"], "invalid_value")
        msg = "unknown field" if type_ == "unknown_field" else err["msg"]
        raise APIError(422, type_, f"{field}: {msg}", field=field) from None
    server = state.settings.server
    _check_text(body.query, "query")
    for key, value in (body.filters or {}).items():
        if not key.strip():
            raise APIError(422, "invalid_value", "filter names must not be empty", field="filters")
        _check_text(key, f"filters.{key}")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise APIError(422, "invalid_value", "filter values must be finite numbers", field=f"filters.{key}")
            if isinstance(v, int) and not isinstance(v, bool) and not _INT64_MIN <= v <= _INT64_MAX:
                # Weaviate and the keyword index store 64-bit integers: beyond that no value can match.
                raise APIError(422, "invalid_value", "filter integers must fit in 64 bits", field=f"filters.{key}")
            if isinstance(v, str):
                _check_text(v, f"filters.{key}")
    if not body.query.strip():
        raise APIError(422, "invalid_value", "query must not be empty", field="query")
    if len(body.query) > server.max_query_chars:
        raise APIError(413, "query_too_long", f"query exceeds {server.max_query_chars} characters", field="query")
    if body.top_k is not None and not 1 <= body.top_k <= server.max_top_k:
        raise APIError(422, "invalid_value", f"top_k must be between 1 and {server.max_top_k}", field="top_k")
    return body


def _check_text(text: str, field: str) -> None:
    """JSON can carry lone surrogates (\\ud800) that no encoder accepts: a client error, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(422, "invalid_value", f"{field} is not valid Unicode (lone surrogate)", field=field) from None


def _require_ready(state: AppState) -> Pipeline:
    """The pipeline, once the gateway is ready; else a 503 ``not_ready``."""
    if not state.ready.is_set() or state.pipeline is None:
        raise APIError(503, "not_ready", f"the knowledge base is still loading ({state.startup_stage})",
                       headers={"Retry-After": contract.retry_after(2)})
    return state.pipeline


def contract_headers(result_trace: Trace, request_id: str) -> dict[str, str]:
    headers = contract.headers(result_trace.mode, degraded=result_trace.degraded, request_id=request_id,
                               timings_ms=result_trace.timings_ms)
    if result_trace.vectors is not None:
        headers["X-RAG-Vectors"] = result_trace.vectors  # fast while a progressive version is upgraded
    return headers


def _unavailable_body(exc: LadderExhausted, request_id: str) -> dict[str, Any]:
    trace = exc.trace
    trace.generation = None
    trace.finish()
    return contract.body(answer=None, mode=Mode.UNAVAILABLE, degradations=trace.degradations, sources=[],
                         kb_version=None, request_id=request_id, timings_ms=trace.timings_ms,
                         error={"type": "unavailable", "message": exc.message, "field": None})


def unavailable_response(exc: LadderExhausted, request_id: str) -> web.Response:
    body = _unavailable_body(exc, request_id)
    headers = contract.headers(Mode.UNAVAILABLE, degraded=True, request_id=request_id,
                               retry_after_s=exc.retry_after_s)
    return web.json_response(body, status=503, headers=headers)


def _build_request(request: web.Request, body: QueryBody, state: AppState) -> QueryRequest:
    return QueryRequest(query=body.query.strip(), top_k=body.top_k or state.settings.server.default_top_k,
                        filters=body.filters or None, stream=body.stream, request_id=request[REQUEST_ID])


async def query(request: web.Request) -> web.StreamResponse:
    state: AppState = request.app[STATE]
    body = parse_query_body(await read_json(request), state)
    pipeline = _require_ready(state)
    req = _build_request(request, body, state)
    request[QUERY_TEXT] = req.query
    deadline: Deadline = request[DEADLINE]
    if req.stream:
        return await _stream(request, pipeline, req, deadline)
    try:
        result = await pipeline.answer(req, deadline)
    except LadderExhausted as exc:
        request[TRACE] = exc.trace
        return unavailable_response(exc, req.request_id)
    request[TRACE] = result.trace
    request[ANSWER_TEXT] = result.answer
    return web.json_response(result.contract(), headers=contract_headers(result.trace, req.request_id))


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(request: web.Request, pipeline: Pipeline, req: QueryRequest,
                  deadline: Deadline) -> web.StreamResponse:
    """SSE: ``delta`` events with text, maybe ``discard``, then ``done`` carrying the full contract."""
    events = pipeline.stream(req, deadline)
    try:
        first = await events.__anext__()  # retrieval runs here, so a 503 can still be a plain response
    except LadderExhausted as exc:
        request[TRACE] = exc.trace
        return unavailable_response(exc, req.request_id)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Request-Id": req.request_id, "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    request[STARTED_RESPONSE] = resp
    result: QueryResult | None = None
    try:
        event = first
        while True:
            kind, payload = event
            if kind == "done":
                result = payload
                await resp.write(_sse("done", result.contract()))
                break
            await resp.write(_sse(kind, {"text": payload} if kind == "delta" else payload))
            try:
                event = await events.__anext__()
            except LadderExhausted as exc:  # fallback.extractive off: after a discard, nothing left to say
                request[TRACE] = exc.trace
                await resp.write(_sse("done", _unavailable_body(exc, req.request_id)))
                break
    finally:
        await events.aclose()
    if result is not None:
        request[TRACE] = result.trace
        request[ANSWER_TEXT] = result.answer
    await resp.write_eof()
    return resp


async def retrieve(request: web.Request) -> web.Response:
    state: AppState = request.app[STATE]
    body = parse_query_body(await read_json(request), state)
    if body.stream:
        raise APIError(422, "invalid_value", "stream is not supported on /v1/retrieve", field="stream")
    pipeline = _require_ready(state)
    req = _build_request(request, body, state)
    request[QUERY_TEXT] = req.query
    trace = Trace(tracer=state.tracer)
    try:
        chunks = await pipeline.retrieve(req, request[DEADLINE], trace)
    except LadderExhausted as exc:
        request[TRACE] = exc.trace
        return unavailable_response(exc, req.request_id)
    trace.generation = None
    trace.finish()
    request[TRACE] = trace
    kb = state.kb
    out = contract.body(answer=None, mode=trace.mode, degradations=trace.degradations,
                        sources=[c.source_view() for c in chunks],
                        chunks=[{**c.source_view(), "text": c.text} for c in chunks],
                        kb_version=kb.version if kb else None, request_id=req.request_id, timings_ms=trace.timings_ms,
                        vectors=trace.vectors)
    return web.json_response(out, headers=contract_headers(trace, req.request_id))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/query", query)
    app.router.add_post("/v1/retrieve", retrieve)
