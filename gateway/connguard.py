"""Connection-level limits aiohttp lacks: a header read timeout and a connection cap (slowloris).

aiohttp times out idle keep-alive connections but not a client that trickles its request headers a
byte at a time, and it accepts connections until the process runs out of file descriptors: 1,100
such clients made the gateway unreachable. Like nginx (``client_header_timeout``, ``worker_connections``)
and Envoy (``request_headers_timeout``, ``max_connections``):

* a connection must finish its first request's headers within ``server.header_timeout_s`` of
  connecting, else it is closed (later requests on a keep-alive connection are not timed per header:
  an idle one is closed after ``server.keepalive_timeout_s``);
* at most ``server.max_connections`` connections are open; a connection beyond that first evicts the
  oldest connection still *waiting for headers* (the slowloris victim pool), and is refused only when
  every open connection is serving a request, so trickling clients cannot lock out real ones.

Installed on the app's server factory by :func:`install` (works for ``web.run_app`` and test servers,
both of which build the server through the application).
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web

from gateway.errors import error_response

log = logging.getLogger("rag_sidecar.connections")
_HEADERS_END = b"\r\n\r\n"


class _Conn(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection; only watches bytes until the headers end."""

    def __init__(self, inner: asyncio.Protocol, guard: "ConnectionGuard") -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.waiting_headers = True
        self.made = False
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- asyncio protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard.admit(self):
            return
        self.made = True
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.made:
            return
        if self.waiting_headers:
            seen = self._tail + data
            if _HEADERS_END in seen:
                self.waiting_headers = False
                self.guard.headers_done(self)
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                # Nothing left to watch: the transport hands later bytes straight to aiohttp (one Python
                # call less per chunk of every request on this keep-alive connection).
                self.data_received = self.inner.data_received  # type: ignore[method-assign]
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.made else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.guard.forget(self)
        if self.made:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- header deadline -------------------------------------------------------------------
    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.guard.header_timeout_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.waiting_headers and self.transport is not None:
            self.guard.header_timeouts += 1
            log.info("closed a connection that did not send its request headers in time",
                     extra={"event": "header_timeout", "timeout_s": self.guard.header_timeout_s})
            self.transport.abort()


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp answers what never reaches our middleware -- malformed HTTP (bad header bytes, over-long
    lines, a bad chunked body) and errors outside it -- with its own ``text/plain`` body, which echoes the
    raw request line. Keep its logging and connection handling; replace only the body with the JSON error
    shape every other answer has, so a client library parses it like any other 4xx."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs (redacted) or raises if bytes went out
        from aiohttp.http_exceptions import HttpProcessingError

        if 400 <= status < 500:
            kind = type(exc).__name__ if isinstance(exc, HttpProcessingError) else "BadHttpMessage"
            resp = error_response(status, "bad_http_request",
                                  f"the request is not valid HTTP/1.1 ({kind}); nothing was processed")
        else:
            resp = error_response(status, "internal_error", "internal server error")
        resp.force_close()
        return resp


def _request_handler(server: web.Server) -> asyncio.Protocol:
    """What ``server()`` builds, as :class:`_JsonErrorHandler` (aiohttp's class has ``__slots__``, so the
    method cannot be swapped on an instance). Falls back to aiohttp's own if its internals moved."""
    try:
        return _JsonErrorHandler(server, loop=server._loop, **server._kwargs)
    except (AttributeError, TypeError):
        return server()


class ConnectionGuard:
    """Counts open connections and knows which are still waiting for their headers (oldest first)."""

    def __init__(self, server: web.Server, *, max_connections: int, header_timeout_s: float) -> None:
        self.server = server
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._open: set[_Conn] = set()
        self._waiting: OrderedDict[_Conn, None] = OrderedDict()
        self.evicted = self.refused = self.header_timeouts = 0

    def __getattr__(self, name: str) -> Any:  # the runner calls shutdown(), connections, … on the server
        return getattr(self.server, name)

    def __call__(self) -> asyncio.Protocol:
        return _Conn(_request_handler(self.server), self)

    def admit(self, conn: _Conn) -> bool:
        if len(self._open) >= self.max_connections:
            if self._waiting:
                victim, _ = self._waiting.popitem(last=False)
                self.evicted += 1
                if victim.transport is not None:
                    victim.transport.abort()
                self._open.discard(victim)
            else:
                self.refused += 1
                log.warning("connection refused: every connection is serving a request",
                            extra={"event": "connection_refused", "max_connections": self.max_connections})
                if conn.transport is not None:
                    conn.transport.abort()
                return False
        self._open.add(conn)
        self._waiting[conn] = None
        return True

    def headers_done(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)

    def forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)

    def snapshot(self) -> dict[str, Any]:
        return {"open": len(self._open), "waiting_headers": len(self._waiting), "max": self.max_connections,
                "evicted": self.evicted, "refused": self.refused, "header_timeouts": self.header_timeouts}


GUARD: web.AppKey[list[ConnectionGuard]] = web.AppKey("connection_guards", list)


def fd_bounded(max_connections: int, reserve: int = 64) -> int:
    """``max_connections`` lowered to fit the process's file-descriptor limit (files, upstream sockets and
    the listener need ``reserve``): past the limit accept() fails and nobody gets in."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return max_connections
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - reserve))


def install(app: web.Application, *, max_connections: int, header_timeout_s: float) -> None:
    """Wrap the server factory the app's runner will build (``AppRunner`` calls ``app._make_handler``)."""
    max_connections = fd_bounded(max_connections)
    make = app._make_handler
    guards: list[ConnectionGuard] = []
    app[GUARD] = guards

    def make_handler(**kwargs: Any) -> Any:
        guard = ConnectionGuard(make(**kwargs), max_connections=max_connections, header_timeout_s=header_timeout_s)
        guards.append(guard)
        return guard

    app._make_handler = make_handler  # type: ignore[method-assign]
