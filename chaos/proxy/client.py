"""`ToxiproxyClient`: a small async client for Toxiproxy's documented HTTP API.

It talks to our :class:`~chaos.proxy.server.FaultProxyServer` and to a real Toxiproxy alike, so a
drill can run against staging. Only README-documented endpoints and methods are used (updates go
over POST, which every 2.x server accepts; PATCH exists only from 2.6). Real Toxiproxy sends its error
JSON as ``text/plain``, so bodies are parsed whatever the content type.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp


class ToxiproxyError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {message}")
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class ToxiproxyNotFound(ToxiproxyError):
    """404: no such proxy or toxic."""


class ToxiproxyConflict(ToxiproxyError):
    """409: a proxy or toxic with that name already exists."""


class ToxiproxyBadRequest(ToxiproxyError):
    """400: invalid body, stream, toxic type or attribute."""


_ERRORS = {400: ToxiproxyBadRequest, 404: ToxiproxyNotFound, 409: ToxiproxyConflict}


class ToxiproxyClient:
    """Async client for a Toxiproxy-compatible API at ``api_url`` (e.g. ``http://127.0.0.1:8474``).

    Every call is bounded by ``timeout_s`` seconds. Errors raise :class:`ToxiproxyError` subclasses;
    network failures raise ``aiohttp.ClientError`` / ``TimeoutError``. Use ``async with`` or :meth:`close`.
    """

    def __init__(self, api_url: str = "http://127.0.0.1:8474", *, timeout_s: float = 5.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ToxiproxyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- server -------------------------------------------------------------------------------------
    async def version(self) -> str:
        """The server's version string (Toxiproxy ≥ 2.1.3 answers JSON, older ones plain text)."""
        body = await self._request("GET", "/version")
        return body["version"] if isinstance(body, dict) else str(body).strip()

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._request("POST", "/reset")

    async def populate(self, proxies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create or replace proxies ({name, listen, upstream[, enabled]}); returns them as the server has them."""
        body = await self._request("POST", "/populate", proxies)
        return list(body.get("proxies") or [])

    # -- proxies ------------------------------------------------------------------------------------
    async def proxies(self) -> dict[str, dict[str, Any]]:
        return await self._request("GET", "/proxies")

    async def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", *, enabled: bool = True
    ) -> dict[str, Any]:
        """Create a proxy; the returned ``listen`` holds the bound address (port 0 → a free port)."""
        return await self._request(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        )

    async def get_proxy(self, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/proxies/{quote(name, safe='')}")

    async def update_proxy(self, name: str, **fields: Any) -> dict[str, Any]:
        """Change ``listen``, ``upstream`` and/or ``enabled``; a new address drops live connections."""
        return await self._request("POST", f"/proxies/{quote(name, safe='')}", fields)

    async def enable(self, name: str) -> dict[str, Any]:
        return await self.update_proxy(name, enabled=True)

    async def disable(self, name: str) -> dict[str, Any]:
        """Stop listening and close the proxy's live connections."""
        return await self.update_proxy(name, enabled=False)

    async def delete_proxy(self, name: str) -> None:
        await self._request("DELETE", f"/proxies/{quote(name, safe='')}")

    # -- toxics -------------------------------------------------------------------------------------
    async def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return await self._request("GET", f"/proxies/{quote(proxy, safe='')}/toxics")

    async def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        attributes: dict[str, int] | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Add a toxic (times in ms, slicer delay in µs, rate in KB/s); ``name`` defaults to "<type>_<stream>"."""
        body: dict[str, Any] = {"type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes or {}}
        if name is not None:
            body["name"] = name
        return await self._request("POST", f"/proxies/{quote(proxy, safe='')}/toxics", body)

    async def get_toxic(self, proxy: str, toxic: str) -> dict[str, Any]:
        return await self._request("GET", self._toxic_path(proxy, toxic))

    async def update_toxic(
        self, proxy: str, toxic: str, *, attributes: dict[str, int] | None = None, toxicity: float | None = None
    ) -> dict[str, Any]:
        """Merge ``attributes`` into the toxic's and/or set ``toxicity``; live connections follow."""
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = attributes
        if toxicity is not None:
            body["toxicity"] = toxicity
        return await self._request("POST", self._toxic_path(proxy, toxic), body)

    async def remove_toxic(self, proxy: str, toxic: str) -> None:
        await self._request("DELETE", self._toxic_path(proxy, toxic))

    # -- plumbing -----------------------------------------------------------------------------------
    @staticmethod
    def _toxic_path(proxy: str, toxic: str) -> str:
        return f"/proxies/{quote(proxy, safe='')}/toxics/{quote(toxic, safe='')}"

    async def _request(self, method: str, path: str, payload: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        data = None if payload is None else json.dumps(payload)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self._session.request(method, self.api_url + path, data=data, headers=headers) as resp:
            text = await resp.text()
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = text  # pre-2.1.3 /version and non-API errors are plain text
        if resp.status >= 400:
            message = body.get("error", text) if isinstance(body, dict) else text.strip()
            raise _ERRORS.get(resp.status, ToxiproxyError)(resp.status, message, method=method, path=path)
        return body
