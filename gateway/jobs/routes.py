"""POST /v1/jobs, GET /v1/jobs/{id}, DELETE /v1/jobs/{id}; starts the store and the worker with the app.

A job is one query (the /v1/query fields at the top level) or a batch (``{"queries": [...]}``),
plus optional ``webhook_url`` and ``accept_degraded``. Every item is validated exactly like a
/v1/query body; an error names the item: ``queries[3].top_k``. Jobs belong to the client that
submitted them (API key, else address): another client gets 404.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from gateway import lifecycle
from gateway.errors import APIError
from gateway.http_input import read_json
from gateway.jobs.store import Job, JobStore, QuotaExceeded
from gateway.jobs.worker import JobWorker
from gateway.routes.query import parse_query_body
from gateway.state import CLIENT_ID, STATE, AppState

log = logging.getLogger("rag_sidecar.jobs")
JOB_FIELDS = frozenset({"queries", "webhook_url", "accept_degraded"})
STORE_ERRORS = (RedisError, sqlite3.Error, OSError, TimeoutError)
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass
class JobsRuntime:
    """Created with the app (its state is frozen once it starts); filled in at start-up."""

    store: JobStore | None = None
    worker: JobWorker | None = None


JOBS: web.AppKey[JobsRuntime] = web.AppKey("rag_sidecar_jobs", JobsRuntime)


def build_store(state: AppState) -> tuple[JobStore, float]:
    """The configured backend and how long its claim() may block waiting for work (seconds)."""
    cfg = state.settings.jobs
    if cfg.backend == "redis":
        from gateway.jobs.redis_store import RedisJobStore

        url = cfg.redis_url or state.settings.resilience.redis_url
        if not url:
            raise ValueError("jobs.backend=redis needs jobs.redis_url (or resilience.redis_url)")
        return RedisJobStore(url, prefix=cfg.redis_prefix, visibility_timeout_s=cfg.visibility_timeout_s,
                             result_ttl_s=cfg.result_ttl_s), cfg.poll_interval_s
    from gateway.jobs.sqlite_store import SQLiteJobStore

    return SQLiteJobStore(Path(state.settings.server.data_dir) / "jobs" / "jobs.sqlite3",
                          visibility_timeout_s=cfg.visibility_timeout_s, result_ttl_s=cfg.result_ttl_s), 0.0


# ---- request parsing ----------------------------------------------------------------------------
def _item_error(exc: APIError, prefix: str) -> APIError:
    message = json.loads(exc.text)["error"]["message"] if exc.text else exc.error_type
    field = f"{prefix}.{exc.field}" if exc.field else prefix
    if exc.field and message.startswith(f"{exc.field}:"):
        message = message[len(exc.field) + 1:].strip()
    return APIError(exc.status, exc.error_type, f"{field}: {message}", field=field)


def parse_job(data: Any, state: AppState) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(item payloads, job options). Raises APIError naming the field (``queries[3].top_k``)."""
    cfg = state.settings.jobs
    if not isinstance(data, dict):
        raise APIError(422, "invalid_type", "request body must be a JSON object")
    options: dict[str, Any] = {}
    accept = data.get("accept_degraded", cfg.accept_degraded)
    if not isinstance(accept, bool):
        raise APIError(422, "invalid_value", "accept_degraded must be true or false", field="accept_degraded")
    options["accept_degraded"] = accept
    if data.get("webhook_url") is not None:
        options["webhook_url"] = _check_webhook(data["webhook_url"], state)
    if "queries" in data:
        extra = sorted(set(data) - JOB_FIELDS)
        if extra:
            raise APIError(422, "unknown_field", f"{extra[0]}: unknown field (per-query fields go inside "
                           "each item of `queries`)", field=extra[0])
        queries = data["queries"]
        if not isinstance(queries, list):
            raise APIError(422, "invalid_type", "queries must be a list of query objects", field="queries")
        prefix = "queries[{}]"
    else:
        queries = [{k: v for k, v in data.items() if k not in JOB_FIELDS}]
        prefix = ""
    if not queries:
        raise APIError(422, "invalid_value", "queries must not be empty", field="queries")
    if len(queries) > cfg.max_items:
        raise APIError(413, "too_many_queries", f"a job holds at most {cfg.max_items} queries, got {len(queries)}",
                       field="queries")
    payloads = []
    default_top_k = state.settings.server.default_top_k
    for i, item in enumerate(queries):
        try:
            body = parse_query_body(item, state)
            if body.stream:
                raise APIError(422, "invalid_value", "stream: not supported for jobs", field="stream")
        except APIError as exc:
            if not prefix:
                raise
            raise _item_error(exc, prefix.format(i)) from None
        payload: dict[str, Any] = {"query": body.query.strip(), "top_k": body.top_k or default_top_k}
        if body.filters:
            payload["filters"] = body.filters
        payloads.append(payload)
    return payloads, options


def _check_webhook(url: Any, state: AppState) -> str:
    cfg = state.settings.jobs
    if not isinstance(url, str):
        raise APIError(422, "invalid_type", "webhook_url must be a string", field="webhook_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise APIError(422, "invalid_value", "webhook_url must be an absolute http(s) URL", field="webhook_url")
    if cfg.webhook_allowed_hosts and parts.hostname not in cfg.webhook_allowed_hosts:
        raise APIError(422, "invalid_value", f"webhook_url host {parts.hostname!r} is not in "
                       "jobs.webhook_allowed_hosts", field="webhook_url")
    if cfg.webhook_secret is None:
        raise APIError(422, "invalid_value", "webhooks are disabled: the gateway has no jobs.webhook_secret "
                       "to sign them with", field="webhook_url")
    return url


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(422, "invalid_value", f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise APIError(422, "invalid_value", f"{name} must be between {lo} and {hi}", field=name)
    return value


# ---- handlers -----------------------------------------------------------------------------------
def _runtime(request: web.Request) -> tuple[JobStore, JobWorker]:
    runtime = request.app[JOBS]
    if runtime.store is None or runtime.worker is None:
        raise APIError(503, "not_ready", "the job queue is not available", headers={"Retry-After": "2"})
    return runtime.store, runtime.worker


@contextlib.asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """The queue's storage failing (Redis down, disk full) is a labelled 503, not a 500."""
    try:
        yield
    except STORE_ERRORS as exc:
        log.warning("job queue unavailable", extra={"event": "jobs_store_error", "error": repr(exc)})
        raise APIError(503, "queue_unavailable", f"the job queue is unavailable: {type(exc).__name__}",
                       headers={"Retry-After": "5"}) from None


async def _own_job(request: web.Request) -> tuple[JobStore, Job]:
    store, _ = _runtime(request)
    async with _store_errors():
        job = await store.get(request.match_info["job_id"])
    if job is None or job.client != request[CLIENT_ID]:
        raise APIError(404, "not_found", "no such job (it may have expired)", field="job_id")
    return store, job


async def submit(request: web.Request) -> web.Response:
    state: AppState = request.app[STATE]
    cfg = state.settings.jobs
    payloads, options = parse_job(await read_json(request, cfg.max_body_bytes), state)
    store, worker = _runtime(request)
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not 1 <= len(idem) <= 255:
        raise APIError(400, "invalid_header", "Idempotency-Key must be 1-255 characters", field="Idempotency-Key")
    # The client rides along in the options: the worker runs each query as that client's flow in the
    # fair embedder queue.
    job = Job(id=uuid.uuid4().hex, client=request[CLIENT_ID], total=len(payloads),
              options={**options, "client": request[CLIENT_ID]})
    try:
        async with _store_errors():
            stored = await store.create(job, payloads, max_pending_per_client=cfg.max_pending_per_client,
                                        idempotency_key=idem)
    except QuotaExceeded as exc:
        state.telemetry.job_rejected("quota")
        raise APIError(429, "quota_exceeded", f"{exc}; wait for earlier jobs to finish", field="queries",
                       headers={"Retry-After": "30"}) from None
    if stored.id == job.id:
        state.telemetry.job_submitted(len(payloads))
        log.info("job queued", extra={"event": "job_queued", "job_id": job.id, "items": len(payloads),
                                      "client": job.client})
        worker.wake()
    location = f"/v1/jobs/{stored.id}"
    return web.json_response({**stored.view(), "links": {"self": location}}, status=202,
                             headers={"Location": location})


async def status(request: web.Request) -> web.Response:
    store, job = await _own_job(request)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    limit = _int_param(request, "limit", DEFAULT_PAGE, 0, MAX_PAGE)
    async with _store_errors():
        items = await store.items(job.id, offset, limit) if limit else []
    nxt = offset + len(items) if limit and offset + len(items) < job.total else None
    links = {"self": f"/v1/jobs/{job.id}"}
    if nxt is not None:
        links["next"] = f"/v1/jobs/{job.id}?offset={nxt}&limit={limit}"
    return web.json_response({**job.view(), "results": items, "offset": offset, "next_offset": nxt,
                              "links": links})


async def cancel(request: web.Request) -> web.Response:
    store, job = await _own_job(request)
    async with _store_errors():
        cancelled = await store.cancel(job.id)
    if cancelled is None:  # expired between the two calls
        raise APIError(404, "not_found", "no such job (it may have expired)", field="job_id")
    if job.status != cancelled.status:
        request.app[STATE].telemetry.job_cancelled(cancelled.cancelled)
        log.info("job cancelled", extra={"event": "job_cancelled", "job_id": job.id,
                                         "items_cancelled": cancelled.cancelled})
    return web.json_response({**cancelled.view(), "links": {"self": f"/v1/jobs/{job.id}"}})


# ---- lifecycle ----------------------------------------------------------------------------------
async def _start(app: web.Application) -> None:
    state = app[STATE]
    store, block_s = build_store(state)
    await store.open()
    worker = JobWorker(store, state.settings.jobs, pipeline=lambda: state.pipeline, ready=state.ready,
                       telemetry=state.telemetry, block_s=block_s)
    worker.start()
    app[JOBS].store, app[JOBS].worker = store, worker


async def _stop_worker(app: web.Application) -> None:
    """on_shutdown: before the server's connections and the app's dependencies close (on_cleanup), so a
    running query is cancelled and given back instead of failing on a closed embedder or store."""
    runtime = app[JOBS]
    if runtime.worker is not None:
        await runtime.worker.stop()


async def _close_store(app: web.Application) -> None:
    runtime = app[JOBS]
    if runtime.store is not None:
        await lifecycle.bounded("close job store", runtime.store.close())


def setup(app: web.Application) -> None:
    if not app[STATE].settings.jobs.enabled:
        return
    app[JOBS] = JobsRuntime()
    app.router.add_post("/v1/jobs", submit)
    app.router.add_get("/v1/jobs/{job_id}", status)
    app.router.add_delete("/v1/jobs/{job_id}", cancel)
    app.on_startup.append(_start)
    app.on_shutdown.append(_stop_worker)
    app.on_cleanup.append(_close_store)
