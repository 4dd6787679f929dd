"""The REST half: what the client's connect and schema calls reach (aiohttp)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from chaos.stubs.httpfaults import drop_connection
from chaos.stubs.weaviate.core import StandIn, _weaviate_error
from chaos.stubs.weaviate.store import (GRPC_MAX_MESSAGE_SIZE, WEAVIATE_VERSION, FakeCollection, _capitalize,
                                        normalize_class)


class RestHalf(StandIn):
    """``/v1/meta``, ``/v1/.well-known/*``, ``/v1/schema`` and the stand-in control routes."""

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/v1/meta", self._meta)
        app.router.add_get("/v1/.well-known/ready", self._ok)
        app.router.add_get("/v1/.well-known/live", self._ok)
        app.router.add_get("/v1/.well-known/openid-configuration", self._no_oidc)
        app.router.add_get("/v1/schema", self._schema_list)
        app.router.add_post("/v1/schema", self._schema_create)
        app.router.add_get("/v1/schema/{name}", self._schema_get)
        app.router.add_delete("/v1/schema/{name}", self._schema_delete)
        app.add_routes([r for r in self.injector.control_routes() if r.path != "/__stats__"])
        app.router.add_get("/__stats__", self._stats)
        app.router.add_delete("/__stats__", self._stats_reset)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        public = request.path.startswith(("/v1/.well-known/", "/__"))
        if self.api_key is not None and not public and \
                request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"code": 401, "message": "unauthorized: invalid api key"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(_weaviate_error(message), status=status)

    async def _meta(self, request: web.Request) -> web.StreamResponse:
        plan = await self.injector.draw(request)
        if plan.reset:
            return drop_connection(request)
        if plan.status is not None:
            return self.injector.error_response(request, plan.status, plan.retry_after_s)
        if plan.malformed:
            return web.Response(text="<html>not json</html>", content_type="application/json")
        return web.json_response({
            "hostname": "http://[::]:8080", "modules": {}, "version": WEAVIATE_VERSION,
            "grpcMaxMessageSize": GRPC_MAX_MESSAGE_SIZE,
        })

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _no_oidc(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def _schema_list(self, request: web.Request) -> web.Response:
        return web.json_response({"classes": [c.schema for c in self.collections.values()]})

    async def _schema_get(self, request: web.Request) -> web.Response:
        coll = self.collections.get(_capitalize(request.match_info["name"]))
        if coll is None:
            return web.Response(status=404)
        return web.json_response(coll.schema)

    async def _schema_create(self, request: web.Request) -> web.Response:
        try:
            schema = normalize_class(await request.json())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return self._error(422, f"invalid class: {exc}")
        if schema["class"] in self.collections:
            return self._error(422, f"class name {schema['class']!r} already exists")
        self.collections[schema["class"]] = FakeCollection(schema)
        return web.json_response(schema)

    async def _schema_delete(self, request: web.Request) -> web.Response:
        self.collections.pop(_capitalize(request.match_info["name"]), None)
        return web.Response(status=200)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _stats_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats())

