"""The OpenAPI 3.1 document, built from the routes' own pydantic models and served at ``/openapi.json``.

Request bodies are the models the handlers validate with (``QueryBody``, ``MessagesRequest``,
``ActivateRequest``, ``FaultSpec``); responses are the contract (:mod:`gateway.contract`) and the error
shape of :mod:`gateway.errors`. A test checks that every registered route is documented, and the fuzz
suite (schemathesis, ``tests/fuzz``) checks the gateway against this document: no 5xx, no response that
the document does not describe.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from gateway.config import Settings
from gateway.contract import QUERY_MODES, Component, Reason
from gateway.routes.admin import ActivateRequest
from gateway.routes.messages import MessagesRequest
from gateway.routes.query import QueryBody
from gateway.upstreams.faultinject import FaultSpec

_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    type: str = Field(description="machine-readable error type, e.g. invalid_value, rate_limited")
    message: str
    field: str | None = Field(description="the offending field or header, when there is one")


class Error(BaseModel):
    """Every 4xx (and the 503s that are not a ladder verdict)."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    message: str


class AnthropicError(BaseModel):
    """/v1/messages speaks Anthropic's error shape (its SDKs parse it)."""

    model_config = ConfigDict(extra="allow")
    type: str
    error: AnthropicErrorDetail


class Degradation(BaseModel):
    model_config = ConfigDict(extra="allow")  # model, detail … where they apply
    component: Component
    reason: Reason


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    title: str | None
    source: str | None
    score: float
    retriever: str = Field(description="hybrid | vector | bm25")


class Chunk(Source):
    text: str


class Answer(BaseModel):
    """The response contract of /v1/query (also the ``done`` event of a stream)."""

    model_config = ConfigDict(extra="allow")  # model, answer_age_s when they apply
    answer: str | None
    mode: str = Field(json_schema_extra={"enum": [m.value for m in QUERY_MODES]})
    degraded: bool
    degradations: list[Degradation]
    sources: list[Source]
    kb_version: str | None
    request_id: str
    timings_ms: dict[str, float]
    vectors: str | None = Field(None, description=(
        "embedded store: the vector set that answered — quality, or fast while a progressive KB version is "
        "upgraded (also X-RAG-Vectors); absent when no vectors took part"), json_schema_extra={
        "enum": ["quality", "fast"]})


class Retrieval(Answer):
    """/v1/retrieve: the contract without an answer, plus the chunks' texts."""

    chunks: list[Chunk]


class Unavailable(Answer):
    """503 when every retrieval path failed (``mode: unavailable``), with ``Retry-After``."""

    error: ErrorDetail


class Probe(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str


MODELS: tuple[type[BaseModel], ...] = (QueryBody, MessagesRequest, ActivateRequest, FaultSpec, Error,
                                       AnthropicError, Answer, Retrieval, Unavailable, Probe)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {"4XX": _json(_ref(Error), "client error (bad input, auth, rate limit): names the field")}
_TIMEOUT_HEADER = {"name": "X-Request-Timeout", "in": "header", "required": False,
                   "description": "this request's budget in seconds, within server.max_request_timeout_s",
                   "schema": {"type": "string"}}
_REQUEST_ID_HEADER = {"name": "X-Request-Id", "in": "header", "required": False,
                      "description": "echoed on the response and sent upstream", "schema": {"type": "string"}}
_V1: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}, {}]  # {} = no auth when auth.api_keys is empty
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
_ANY_OBJECT = {"type": "object"}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _operations() -> dict[str, dict[str, Any]]:
    v1_params = [_TIMEOUT_HEADER, _REQUEST_ID_HEADER]
    not_ready = {"anyOf": [_ref(Unavailable), _ref(Error)]}
    admin_ok = _json(_ANY_OBJECT, "the new state")
    admin_fail = {**_ERRORS, "503": _json(_ref(Error), "the knowledge base cannot be changed now"),
                  "507": _json(_ref(Error), "disk full: nothing was changed")}
    return {
        "/v1/query": {"post": {
            "summary": "Answer a question over the knowledge base (degrades honestly, see mode)",
            "security": _V1, "parameters": v1_params, "requestBody": _body(QueryBody),
            "responses": {
                "200": {"description": "an answer, possibly degraded (mode, degradations, X-RAG-* headers)",
                        "content": {"application/json": {"schema": _ref(Answer)},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                "503": _json(not_ready, "every retrieval path failed, or the KB is still loading (Retry-After)"),
                **_ERRORS}}},
        "/v1/retrieve": {"post": {
            "summary": "Retrieve chunks only (no generation)", "security": _V1, "parameters": v1_params,
            "requestBody": _body(QueryBody),
            "responses": {"200": _json(_ref(Retrieval), "chunks, possibly from the keyword fallback"),
                          "503": _json(not_ready, "every retrieval path failed, or the KB is still loading"),
                          **_ERRORS}}},
        "/v1/messages": {"post": {
            "summary": "Anthropic Messages API gateway (ANTHROPIC_BASE_URL): per-model guards, fallback chains",
            "security": _V1, "parameters": v1_params, "requestBody": _body(MessagesRequest),
            "responses": {
                "200": {"description": "the upstream's answer (X-RAG-Mode: full | fallback_model)",
                        "content": {"application/json": {"schema": _ANY_OBJECT},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                "4XX": _json({"anyOf": [_ref(Error), _ref(AnthropicError)]},
                             "bad input, auth, or the upstream's own 4xx relayed"),
                "529": _json(_ref(AnthropicError), "every model of the chain failing, or no stream slot (Retry-After)"),
                "default": _json(_ref(AnthropicError), "an upstream status relayed as-is")}}},
        "/v1/messages/count_tokens": {"post": {
            "summary": "Anthropic token counting, under the model's own guard (no fallback: a count is per model)",
            "security": _V1, "parameters": v1_params, "requestBody": _body(MessagesRequest),
            "responses": {
                "200": _json(_ANY_OBJECT, "the upstream's count ({input_tokens})"),
                "4XX": _json({"anyOf": [_ref(Error), _ref(AnthropicError)]},
                             "bad input, auth, or the upstream's own 4xx relayed"),
                "529": _json(_ref(AnthropicError), "the model is unavailable (Retry-After)"),
                "default": _json(_ref(AnthropicError), "an upstream status relayed as-is")}}},
        "/v1/models": {"get": {
            "summary": "Anthropic model list, under its own endpoint guard (query string passed on)",
            "security": _V1, "parameters": v1_params,
            "responses": {
                "200": _json(_ANY_OBJECT, "the upstream's model list"),
                "4XX": _json({"anyOf": [_ref(Error), _ref(AnthropicError)]},
                             "auth, or the upstream's own 4xx relayed"),
                "529": _json(_ref(AnthropicError), "the upstream is unavailable (Retry-After)"),
                "default": _json(_ref(AnthropicError), "an upstream status relayed as-is")}}},
        "/livez": {"get": {"summary": "the process is up", "responses": {"200": _json(_ref(Probe), "up")}}},
        "/readyz": {"get": {"summary": "the KB is loaded", "responses": {
            "200": _json(_ref(Probe), "ready"), "503": _json(_ref(Probe), "not ready (stage, progress)")}}},
        "/health": {"get": {"summary": "every component's status (paths only for admins)",
                            "responses": {"200": _json(_ref(Probe), "ok | degraded | starting")}}},
        "/metrics": {"get": {"summary": "Prometheus text format 0.0.4", "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "404": _json(_ref(Error), "telemetry.prometheus is off")}}},
        "/openapi.json": {"get": {"summary": "this document",
                                  "responses": {"200": _json(_ANY_OBJECT, "OpenAPI 3.1")}}},
        "/admin/breakers": {"get": {"summary": "every guard's breaker, bulkhead and retry budget",
                                    "security": _ADMIN, "responses": {"200": admin_ok, **_ERRORS}}},
        "/admin/breakers/{name}/{action}": {"post": {
            "summary": "drills: open (held), close or reset a breaker", "security": _ADMIN,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["open", "close", "reset"]}}],
            "responses": {"200": admin_ok, **_ERRORS}}},
        "/admin/kb": {"get": {"summary": "KB versions (the active one flagged)", "security": _ADMIN,
                              "responses": {"200": admin_ok, **_ERRORS}}},
        "/admin/kb/activate": {"post": {"summary": "switch the active KB version atomically", "security": _ADMIN,
                                        "requestBody": _body(ActivateRequest),
                                        "responses": {"200": admin_ok, **admin_fail}}},
        "/admin/kb/rollback": {"post": {"summary": "back to the version before the active one",
                                        "security": _ADMIN, "responses": {"200": admin_ok, **admin_fail}}},
        "/admin/faults": {
            "get": {"summary": "injected faults", "security": _ADMIN, "responses": {"200": admin_ok, **_ERRORS}},
            "delete": {"summary": "clear every fault", "security": _ADMIN,
                       "responses": {"200": admin_ok, **_ERRORS}}},
        "/admin/faults/{dependency}": {
            "put": {"summary": "inject a fault (403 unless chaos.allow_fault_injection)", "security": _ADMIN,
                    "parameters": [{"name": "dependency", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "requestBody": _body(FaultSpec), "responses": {"200": admin_ok, **_ERRORS}},
            "delete": {"summary": "clear one dependency's fault", "security": _ADMIN,
                       "parameters": [{"name": "dependency", "in": "path", "required": True,
                                       "schema": {"type": "string"}}],
                       "responses": {"200": admin_ok, **_ERRORS}}},
    }


def _job_operations() -> dict[str, dict[str, Any]]:
    job = _json(_ANY_OBJECT, "the job (status, counts, links; results when done)")
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    unavailable = {"503": _json(_ref(Error), "the job queue is unavailable (Retry-After)")}
    item = {"$ref": _REF.format(model="QueryBody")}
    return {
        "/v1/jobs": {"post": {
            "summary": "submit one query (the /v1/query fields) or a batch ({queries: [...]}) to run later",
            "security": _V1, "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                             "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "anyOf": [item, {"type": "object", "required": ["queries"], "properties": {
                    "queries": {"type": "array", "items": item, "minItems": 1},
                    "webhook_url": {"type": "string"}, "accept_degraded": {"type": "boolean"}}}]}}}},
            "responses": {"200": job, "202": job, **_ERRORS, **unavailable}}},
        "/v1/jobs/{job_id}": {
            "get": {"summary": "a job's status and results (paged: offset, limit)", "security": _V1,
                    "parameters": [*job_id,
                                   {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer"}},
                                   {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}}],
                    "responses": {"200": job, **_ERRORS, **unavailable}},
            "delete": {"summary": "cancel a job (finished items keep their results)", "security": _V1,
                       "parameters": job_id, "responses": {"200": job, **_ERRORS, **unavailable}}},
    }


def build_document(settings: Settings | None = None, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document (JSON-able); limits that are configurable come from ``settings``."""
    _, schemas = models_json_schema([(m, "validation") for m in MODELS], ref_template=_REF)
    server = (settings or Settings()).server
    query = schemas["$defs"]["QueryBody"]["properties"]
    query["query"]["maxLength"] = server.max_query_chars
    top_k = query["top_k"]
    for option in top_k.get("anyOf", [top_k]):
        if option.get("type") == "integer":
            option.update(minimum=1, maximum=server.max_top_k)
    return {
        "openapi": "3.1.0",
        "info": {"title": "rag-sidecar", "version": version,
                 "description": "Resilience gateway for RAG chatbots: every degraded answer says so."},
        "paths": {**_operations(), **(_job_operations() if settings is None or settings.jobs.enabled else {})},
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {
                           "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                           "bearer": {"type": "http", "scheme": "bearer"}}},
    }


DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_document", dict)


async def openapi_json(request: web.Request) -> web.Response:
    doc = request.app.get(DOCUMENT)
    if doc is None:
        doc = build_document()
    return web.json_response(doc)


def setup(app: web.Application) -> None:
    from gateway.state import STATE

    app[DOCUMENT] = build_document(app[STATE].settings)
    app.router.add_get("/openapi.json", openapi_json)
