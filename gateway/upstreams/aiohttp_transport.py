"""The ``/v1/messages`` upstream transport over ``aiohttp.ClientSession`` (``llm.transport: aiohttp``): the
client before :mod:`gateway.upstreams.http1`, kept so an operator can switch back. Same surface as
:class:`~gateway.upstreams.http1.H1Transport` (``request`` → a response with ``status``, ``headers``,
``content.readany()``, ``total_bytes``, ``set_exception``, ``release``, ``close``) and the same error type:
aiohttp's ``ClientError`` becomes :class:`~gateway.upstreams.http1.TransportError`."""
from __future__ import annotations

from collections.abc import Awaitable, Mapping

import aiohttp
from multidict import CIMultiDictProxy

from gateway.upstreams.http1 import ConnectTimeout, TransportError


class AiohttpResponse:
    """An ``aiohttp.ClientResponse`` seen through the transport's surface."""

    __slots__ = ("_resp", "_content", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._content = resp.content
        self.status = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers

    @property
    def content(self) -> AiohttpResponse:
        return self

    @property
    def total_bytes(self) -> int:
        return self._content.total_bytes

    async def readany(self) -> bytes:
        return await _mapped(self._content.readany())

    async def read(self) -> bytes:
        return await _mapped(self._resp.read())

    def set_exception(self, exc: BaseException) -> None:
        self._content.set_exception(exc)

    def release(self, *, drain: bool = False) -> None:
        self._resp.release()  # aiohttp closes a connection whose body has not ended (no drain)

    def close(self) -> None:
        self._resp.close()


async def _mapped(read: Awaitable[bytes]) -> bytes:
    """``read``'s bytes; aiohttp's errors as :class:`TransportError` (a timeout stays a TimeoutError)."""
    try:
        return await read
    except TimeoutError:
        raise
    except aiohttp.ClientError as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from exc


class AiohttpTransport:
    """One shared ``aiohttp.ClientSession`` (no connection cap: our bulkheads bound it)."""

    def __init__(self, *, connect_s: float) -> None:
        self.connect_s = connect_s
        self._session: aiohttp.ClientSession | None = None
        # One timeout object for every request (no sock_read: streams have IdleWatch).
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cookie jar: a cookie the upstream sets in answer to one client (a CDN's bot or affinity
            # cookie) must not ride along on every other client's requests; the lean client keeps none either.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                                  timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> AiohttpResponse:
        """Raises :class:`TransportError` (:class:`ConnectTimeout` for the connect limit)."""
        try:
            resp = await self.session.request(method, url, data=body, headers=headers, timeout=self._timeout)
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimeout(f"{type(exc).__name__}: {exc}", before_response=True) from exc
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        return AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
