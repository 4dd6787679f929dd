"""The upstream HTTP transport of the ``/v1/messages`` pass-through, chosen by ``llm.transport``: what a
transport and its responses offer, and the one error type both raise."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from multidict import CIMultiDictProxy

from gateway.upstreams.aiohttp_transport import AiohttpTransport
from gateway.upstreams.http1 import ConnectTimeout, H1Transport, TransportError

TransportKind = Literal["h1", "aiohttp"]

__all__ = ["Body", "ConnectTimeout", "Response", "Transport", "TransportError", "TransportKind", "make_transport"]


class Body(Protocol):
    """A response body (``response.content``)."""

    @property
    def total_bytes(self) -> int:
        """Body bytes that arrived so far, read or not."""
        ...

    async def readany(self) -> bytes:
        """Bytes that arrived since the last call (waiting for some); ``b""`` at the end. Raises
        :class:`TransportError` when the connection broke, or what :meth:`set_exception` set."""
        ...

    def set_exception(self, exc: BaseException) -> None:
        """Fail the pending or next read with ``exc``."""
        ...


class Response(Protocol):
    """An answer whose status and headers arrived."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> Body: ...

    async def read(self) -> bytes:
        """The rest of the body. Raises :class:`TransportError`."""
        ...

    def release(self, *, drain: bool = False) -> None:
        """Done: pool the connection if the body ended cleanly, else close it. ``drain``: the caller has
        what it wanted before the body's end; a transport may read and drop the tail to keep the connection."""
        ...

    def close(self) -> None:
        """Done, whatever is left: close the connection."""
        ...


class Transport(Protocol):
    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Response:
        """Send a request, wait for the answer's head. Raises :class:`TransportError`
        (:class:`ConnectTimeout`, a TimeoutError too, for the connect limit)."""
        ...

    async def close(self) -> None: ...


def make_transport(kind: TransportKind, *, connect_s: float) -> Transport:
    """``h1``: :class:`~gateway.upstreams.http1.H1Transport`; ``aiohttp``:
    :class:`~gateway.upstreams.aiohttp_transport.AiohttpTransport`."""
    if kind == "h1":
        return H1Transport(connect_s=connect_s)
    return AiohttpTransport(connect_s=connect_s)
