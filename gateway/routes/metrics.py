"""GET /metrics: the metric catalogue in Prometheus text format (0.0.4), for teams without Datadog.

404 when ``telemetry.prometheus`` is off. Under ``serve --workers N`` it merges every worker's samples,
labelled ``worker`` (``?local=1``: this worker's only). Exempt from auth and rate limiting (a probe route).
"""
from __future__ import annotations

from aiohttp import web

from gateway.errors import APIError
from gateway.state import STATE
from gateway.telemetry import PROMETHEUS_CONTENT_TYPE
from gateway.workers import WORKER


async def metrics(request: web.Request) -> web.Response:
    telemetry = request.app[STATE].telemetry
    if telemetry.registry is None:
        raise APIError(404, "not_found", "Prometheus endpoint disabled (telemetry.prometheus: false)")
    body = telemetry.prometheus_text()
    worker = request.app.get(WORKER)
    if worker is not None and "local" not in request.query:  # `serve --workers N`: every worker's samples
        body = await worker.metrics_text(body)
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
