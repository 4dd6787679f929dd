"""CORS for browser callers, with aiohttp-cors: only ``server.cors_origins`` may call from a web page.

Default: no origin. A browser then cannot read any answer, and cannot even *send* a JSON request from
another origin: ``application/json`` (required by :mod:`gateway.http_input`) is not a CORS-safelisted
type, so the browser sends a preflight first, which gets no ``Access-Control-Allow-Origin`` and stops
the request. (Accepting text/plain or form bodies as JSON skipped that preflight: any page could make a
visitor's browser spend the sidecar's Anthropic key.)

Allowed origins get the ``/v1/*`` routes (and probes) with the headers chatbot frontends send
(``Authorization``, ``x-api-key``, ``anthropic-version``, ``X-Request-Timeout`` …); credentials
(cookies) are never allowed: API keys travel in headers.
"""
from __future__ import annotations

from aiohttp import web

ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Api-Key", "X-Request-Id", "X-Request-Timeout",
                 "Anthropic-Version", "Anthropic-Beta")
EXPOSE_HEADERS = ("X-Request-Id", "X-RAG-Mode", "X-RAG-Degraded", "Server-Timing", "Retry-After", "X-RAG-Vectors",
                  "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def is_preflight(request: web.Request) -> bool:
    """A CORS preflight: answered by aiohttp-cors before auth and rate limiting (it carries no key)."""
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def setup_cors(app: web.Application, origins: list[str]) -> None:
    """Register CORS on every /v1/* route and the probes for ``origins`` (none: nothing registered)."""
    if not origins:
        return
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers=EXPOSE_HEADERS,
                                           allow_headers=ALLOW_HEADERS, allow_methods=["GET", "POST"], max_age=600)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/v1/") or path in ("/livez", "/readyz", "/health", "/openapi.json"):
            cors.add(route)
