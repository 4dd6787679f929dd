"""`FaultProxyServer`: the proxies plus Toxiproxy's HTTP API over them (aiohttp).

Endpoints, status codes and bodies follow Toxiproxy 2.x (``api.go``) so its client libraries drive
this server unchanged: 201 on proxy create and populate, 200 on toxic create, 204 on deletes and
reset, errors as ``{"error": "...", "status": N}``; updates accept POST (documented) and PATCH (2.6+).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chaos.proxy.errors import (
    ApiError,
    bad_request_body,
    missing_field,
    proxy_already_exists,
    proxy_not_found,
)
from chaos.proxy.tcp_proxy import Proxy, split_host_port
from chaos.proxy.toxics import json_kind

log = logging.getLogger("chaos.proxy")

# Semver: the Toxiproxy release whose API this matches (2.6 added PATCH; reset_peer is 2.2+), with build
# metadata saying it is not the Go server. Toxiproxy's README tells clients to read /version for 1.x vs 2.x.
VERSION = "2.6.0+rag-sidecar.0.1.0"
DEFAULT_LISTEN = "127.0.0.1:0"  # Toxiproxy would bind every interface for a missing listen; stay on loopback


class FaultProxyServer:
    """TCP fault proxies with Toxiproxy's toxics, managed in-process or over Toxiproxy's HTTP API.

    ``seed`` makes toxicity draws, jitter and slicer sizes reproducible: each toxic draws from a stream of
    its own (seeded by ``seed``, the proxy's and the toxic's names, afresh each time it is added), so what a
    drill's toxic does never depends on what earlier drills drew on the same server, and its toxicity is
    realised at its rate in every run of draws (:class:`~chaos.proxy.tcp_proxy.SeededDraws`). ``connect_timeout_s``
    bounds each dial to an upstream (the client connection is closed if it fails, as Toxiproxy does).
    """

    def __init__(self, *, seed: int | None = None, connect_timeout_s: float = 10.0) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._connect_timeout_s = connect_timeout_s
        self._proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()  # one API mutation at a time, like Toxiproxy's collection mutex
        self._runner: web.AppRunner | None = None
        self._api_url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, api_host: str = "127.0.0.1", api_port: int = 8474) -> None:
        """Serve the HTTP API on ``api_host:api_port`` (0 picks a free port; see :attr:`api_url`)."""
        app = web.Application(middlewares=[_reject_browsers, _api_errors])
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, api_host, api_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._api_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("fault proxy API listening on %s", self._api_url)

    @property
    def api_url(self) -> str:
        """``http://host:port`` of the API; only valid after :meth:`start`."""
        if self._api_url is None:
            raise RuntimeError("FaultProxyServer.start() has not been awaited")
        return self._api_url

    async def stop(self) -> None:
        """Stop every proxy (closing its connections) and the API."""
        for proxy in list(self._proxies.values()):
            await proxy.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FaultProxyServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- programmatic API (same rules as the HTTP API; raises ApiError) ---------------------------
    @property
    def proxies(self) -> dict[str, Proxy]:
        return dict(self._proxies)

    def get_proxy(self, name: str) -> Proxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise proxy_not_found()
        return proxy

    async def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """Create (and, if ``enabled``, start) a proxy. 409 if ``name`` exists; 500 if it cannot listen."""
        if not name:
            raise missing_field("name")
        if not upstream:
            raise missing_field("upstream")
        _check_upstream(upstream)
        if name in self._proxies:
            raise proxy_already_exists()
        proxy = self._new_proxy(name, listen or DEFAULT_LISTEN, upstream)
        if enabled:
            await proxy.start()
        self._proxies[name] = proxy
        return proxy

    async def update_proxy(
        self, name: str, *, listen: str | None = None, upstream: str | None = None, enabled: bool | None = None
    ) -> Proxy:
        proxy = self.get_proxy(name)
        if upstream:
            _check_upstream(upstream)
        await proxy.update(
            listen=listen or proxy.listen,
            upstream=upstream or proxy.upstream,
            enabled=proxy.enabled if enabled is None else enabled,
        )
        return proxy

    async def delete_proxy(self, name: str) -> None:
        proxy = self.get_proxy(name)
        await proxy.stop()
        del self._proxies[name]

    async def populate(self, entries: Any) -> list[Proxy]:
        """Create or replace proxies in bulk (Toxiproxy's ``/populate``).

        All entries are validated first. An existing proxy with the same ``listen`` and ``upstream`` is
        kept untouched (toxics included); otherwise it is stopped and replaced.
        """
        if not isinstance(entries, list):
            raise bad_request_body(f"json: cannot unmarshal {json_kind(entries)} into Go value of type []struct")
        parsed: list[tuple[str, str, str, bool]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries, start=1):
            name, listen, upstream, enabled = _proxy_fields(entry, defaults=("", "", "", True))
            if not name:
                raise missing_field(f"name at proxy {i}")
            if not upstream:
                raise missing_field(f"upstream at proxy {i}")
            _check_upstream(upstream)
            if name in seen:
                raise ApiError(f'duplicate proxy name "{name}"', 500)
            seen.add(name)
            parsed.append((name, listen or DEFAULT_LISTEN, upstream, enabled))
        result: list[Proxy] = []
        for name, listen, upstream, enabled in parsed:
            existing = self._proxies.get(name)
            if existing is not None:
                if existing.listen == listen and existing.upstream == upstream:
                    result.append(existing)
                    continue
                await existing.stop()
                del self._proxies[name]
            result.append(await self.create_proxy(name, listen, upstream, enabled))
        return result

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic (Toxiproxy's ``/reset``)."""
        for proxy in self._proxies.values():
            await proxy.start()
            proxy.reset_toxics()

    def _new_proxy(self, name: str, listen: str, upstream: str) -> Proxy:
        return Proxy(name, listen, upstream, rng=self._rng, seed=self._seed, connect_timeout_s=self._connect_timeout_s)

    # -- HTTP ---------------------------------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/reset", self._reset)
        r.add_get("/proxies", self._proxy_index)
        r.add_post("/proxies", self._proxy_create)
        r.add_post("/populate", self._populate)
        r.add_get("/proxies/{proxy}", self._proxy_show)
        r.add_post("/proxies/{proxy}", self._proxy_update)
        r.add_patch("/proxies/{proxy}", self._proxy_update)
        r.add_delete("/proxies/{proxy}", self._proxy_delete)
        r.add_get("/proxies/{proxy}/toxics", self._toxic_index)
        r.add_post("/proxies/{proxy}/toxics", self._toxic_create)
        r.add_get("/proxies/{proxy}/toxics/{toxic}", self._toxic_show)
        r.add_post("/proxies/{proxy}/toxics/{toxic}", self._toxic_update)
        r.add_patch("/proxies/{proxy}/toxics/{toxic}", self._toxic_update)
        r.add_delete("/proxies/{proxy}/toxics/{toxic}", self._toxic_delete)
        r.add_get("/version", self._version)
        r.add_get("/__stats__", self._stats)

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(body=(json.dumps({"version": VERSION}) + "\n").encode(),
                            headers={"Content-Type": "application/json"})

    async def _stats(self, request: web.Request) -> web.Response:
        """Not Toxiproxy: connections accepted and resets fired per proxy (cumulative), for drills."""
        return _json({name: dict(p.stats) for name, p in self._proxies.items()})

    async def _reset(self, request: web.Request) -> web.Response:
        async with self._lock:
            await self.reset()
        return web.Response(status=204)

    async def _proxy_index(self, request: web.Request) -> web.Response:
        return _json({name: p.to_json() for name, p in self._proxies.items()})

    async def _proxy_create(self, request: web.Request) -> web.Response:
        name, listen, upstream, enabled = _proxy_fields(await _body(request), defaults=("", "", "", True))
        async with self._lock:
            proxy = await self.create_proxy(name, listen, upstream, enabled)
        return _json(proxy.to_json(), status=201)

    async def _populate(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            async with self._lock:
                proxies = await self.populate(body)
        except ApiError as exc:
            return _json({**exc.to_json(), "proxies": None}, status=exc.status)
        return _json({"proxies": [p.to_json() for p in proxies]}, status=201)

    async def _proxy_show(self, request: web.Request) -> web.Response:
        return _json(self.get_proxy(request.match_info["proxy"]).to_json())

    async def _proxy_update(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        _, listen, upstream, enabled = _proxy_fields(
            await _body(request), defaults=(proxy.name, proxy.listen, proxy.upstream, proxy.enabled)
        )
        async with self._lock:
            await self.update_proxy(proxy.name, listen=listen, upstream=upstream, enabled=enabled)
        return _json(proxy.to_json())

    async def _proxy_delete(self, request: web.Request) -> web.Response:
        async with self._lock:
            await self.delete_proxy(request.match_info["proxy"])
        return web.Response(status=204)

    async def _toxic_index(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        return _json([t.to_json() for t in proxy.toxics()])

    async def _toxic_create(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        toxic = proxy.add_toxic(await _body(request))
        return _json(toxic.to_json())

    async def _toxic_show(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        return _json(proxy.get_toxic(request.match_info["toxic"]).to_json())

    async def _toxic_update(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        toxic = proxy.update_toxic(request.match_info["toxic"], await _body(request))
        return _json(toxic.to_json())

    async def _toxic_delete(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        proxy.remove_toxic(request.match_info["toxic"])
        return web.Response(status=204)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _reject_browsers(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Toxiproxy refuses browser user agents so a web page cannot drive the API (CSRF).
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, text="User agent not allowed\n")
    return await handler(request)


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.to_json(), status=exc.status)


def _json(payload: Any, status: int = 200) -> web.Response:
    # Exactly "application/json", as Toxiproxy sends it (aiohttp's content_type= would add "; charset=utf-8",
    # which Chaos Toolkit's HTTP provider does not take for JSON and leaves the body a string).
    return web.Response(body=json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"})


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise bad_request_body("EOF")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise bad_request_body(str(exc)) from exc


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; Go's decoder (and so Toxiproxy) does not.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _proxy_fields(body: Any, *, defaults: tuple[str, str, str, bool]) -> tuple[str, str, str, bool]:
    """(name, listen, upstream, enabled) from a proxy JSON object; absent or null fields keep ``defaults``."""
    if not isinstance(body, dict):
        raise bad_request_body(f"json: cannot unmarshal {json_kind(body)} into Go value of type toxiproxy.Proxy")
    values: list[Any] = []
    for key, default in zip(("name", "listen", "upstream", "enabled"), defaults):
        value = body.get(key)
        if value is None:
            value = default
        elif not isinstance(value, type(default)):
            go_type = "bool" if isinstance(default, bool) else "string"
            raise bad_request_body(
                f"json: cannot unmarshal {json_kind(value)} into Go struct field Proxy.{key} of type {go_type}"
            )
        values.append(value)
    return values[0], values[1], values[2], values[3]


def _check_upstream(upstream: str) -> None:
    try:
        split_host_port(upstream)
    except ValueError as exc:
        raise bad_request_body(f"upstream {exc}") from exc
