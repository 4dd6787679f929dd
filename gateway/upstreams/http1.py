"""A lean HTTP/1.1 client for the ``/v1/messages`` pass-through (``llm.transport: h1``).

Why: aiohttp's client costs ~0.09 ms CPU per request on top of a minimal pass-through (measured: the same
minimal floor at 0.194 ms/request with ``aiohttp.ClientSession``, 0.109 ms with an ``asyncio.Protocol`` and
httptools' llhttp parser). The pass-through needs little of it: one request per connection at a time, the
body as bytes, the answer as bytes. What a production client must still do, and this one does:

- ``http`` and ``https`` (the default verifying :func:`ssl.create_default_context`, SNI = the URL's host, as
  aiohttp's default); connect (DNS through the loop + TCP + TLS) bounded by ``connect_s``;
- a keep-alive pool per (scheme, host, port): LIFO (the warmest connection first), an idle connection
  expires after ``keepalive_s`` or the server's own ``Keep-Alive: timeout=N`` (whichever is shorter), at
  most ``max_idle`` idle connections per origin; ``Connection: close`` and HTTP/1.0 are honoured;
- bodies by Content-Length, chunked (trailers ignored) or read-to-close; 1xx interim answers skipped;
  204/304 have no body; status line + headers bounded by ``max_header_bytes``;
- a pooled connection the server closed while it was idle is never used: closed ones are dropped when the
  loop sees the close, and one whose socket is readable when taken (the close arrived, not yet seen; urllib3's
  ``is_connection_dropped``) is dropped too. A reused connection that still fails before any response byte
  is retried once on a fresh connection for idempotent methods only (GET ``/v1/models``), as aiohttp does
  (RFC 9112 §9.3.1: a POST may have been applied; the guard's retry, under its budget, decides); never
  once a byte of the answer arrived;
- cancellation or any error closes the connection: a half-read connection never goes back to the pool. A
  caller that has all it needs before the body's end (an SSE stream's ``message_stop`` before the last
  chunk) may ``release(drain=True)``: the rest (at most ``DRAIN_BYTES``, within ``DRAIN_S``) is read and
  dropped, and the connection pooled only if the body then ends; aiohttp closes it, which costs the next
  request a new TCP + TLS handshake;
- backpressure: above ``high_water`` unread body bytes the socket is paused, and resumed when the reader
  takes them, so a slow reader holds at most ~``high_water`` + one socket read of the answer.

Every connection-level failure is one type, :class:`TransportError` (a connect timeout is also a
``TimeoutError``). Not supported, on purpose: HEAD (llhttp would wait for a body), proxies from the
environment (aiohttp's default ``trust_env=False`` ignores them too), compressed answers (we never send
``Accept-Encoding``; a ``Content-Encoding`` we did not ask for is an error, not garbage relayed), HTTP/2.
"""
from __future__ import annotations

import asyncio
import functools
import select
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

Origin = tuple[str, str, int]  # (scheme, host, port)

KEEPALIVE_S = 15.0  # aiohttp's keepalive_timeout: below the idle timeouts of common servers and LBs (nginx 75 s)
MAX_IDLE_PER_ORIGIN = 256
MAX_HEADER_BYTES = 64 * 1024  # status line + headers (Envoy's default limit is 60 KiB)
HIGH_WATER = 64 * 1024  # unread body bytes above which the socket is paused
DRAIN_S = 1.0  # how long a released answer may take to end (release(drain=True))
DRAIN_BYTES = 64 * 1024  # and how many bytes of it may still come
_NO_FORWARD = frozenset({"host", "content-length", "transfer-encoding", "connection"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class TransportError(Exception):
    """The connection to the upstream failed or broke: refused, reset, closed early, TLS failure, a
    malformed or oversized answer. ``before_response``: not one byte of the answer had arrived."""

    def __init__(self, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response


class ConnectTimeout(TransportError, TimeoutError):
    """Connecting (DNS, TCP, TLS) took longer than the connect limit."""


@functools.lru_cache(maxsize=256)
def _split(url: str) -> tuple[Origin, str, str]:
    """``url`` → (origin, Host header, request target)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), host_header, target


def _request_head(method: str, target: str, host: str, headers: Mapping[str, str], length: int | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() in _NO_FORWARD:
            continue  # framing is ours
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r}: CR/LF or ':' in a header would split the request")
        lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


def _keepalive_timeout(value: str) -> float | None:
    """``Keep-Alive: timeout=5, max=100`` → 5.0."""
    for part in value.split(","):
        key, _, num = part.strip().partition("=")
        if key.strip().lower() == "timeout":
            try:
                return float(num)
            except ValueError:
                return None
    return None


def _readable(conn: _Conn) -> bool:
    """An idle connection's socket has something to read: its peer closed it (or sent bytes nobody asked
    for). poll(2), not select(2): descriptors above 1024 are common on a busy gateway; one poll object per
    connection, made at its first reuse (a syscall per reuse, no allocation)."""
    poller = conn.poller
    if poller is None:
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return True
        poller = conn.poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class Response:
    """One answer: ``status``, ``headers`` (case-insensitive), and the body through :meth:`readany` /
    :meth:`read`. ``content`` is the response itself (the shape aiohttp's ``resp.content`` has).
    End it with :meth:`release` (pool the connection if the body was read to its end) or :meth:`close`."""

    __slots__ = ("status", "headers", "total_bytes", "_conn", "_loop", "_chunks", "_buffered", "_waiter", "_exc", "_done",
                 "_head_done", "_raw", "_raw_size", "_head_bytes", "_got_bytes", "_interim", "_to_close", "_keep_alive",
                 "_paused", "_high_water", "_drain_left", "_drain_timer")

    def __init__(self, conn: _Conn, high_water: int) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self.total_bytes = 0  # body bytes that arrived (read or not)
        self._conn: _Conn | None = conn
        self._loop = conn.loop  # asyncio.get_running_loop() costs a getpid(2) a call on Python 3.11
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self._done = False  # the body ended
        self._head_done = False
        self._raw: list[tuple[bytes, bytes]] = []
        self._raw_size = 0  # bytes of the headers in _raw, counted as on_headers_complete's limit counts them
        self._head_bytes = 0
        self._got_bytes = False
        self._interim = False  # parsing a 1xx interim answer
        self._to_close = False  # body delimited by the end of the connection
        self._keep_alive = False
        self._paused = False
        self._high_water = high_water
        self._drain_left = -1  # >= 0: released while draining (bytes that may still come)
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    def content(self) -> Response:
        return self

    # -- the reader's side ------------------------------------------------------------------------------
    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); ``b""`` at the end.
        Raises :class:`TransportError` when the connection broke (after the bytes that did arrive), or
        what :meth:`set_exception` set."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    conn = self._conn
                    if conn is not None and conn.transport is not None:
                        conn.transport.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._done:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts: list[bytes] = []
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def set_exception(self, exc: BaseException) -> None:
        """Fail the reader (a pending or the next :meth:`readany`) with ``exc``; e.g. an idle limit."""
        if self._exc is None:
            self._exc = exc
        self._wake()

    def release(self, *, drain: bool = False) -> None:
        """Done with the answer: its connection goes back to the pool when the body ended cleanly and the
        server keeps it alive, else it is closed (a half-read connection is never reused). ``drain``: the
        body has not ended yet but nothing more of it is wanted; read and drop the rest (up to
        ``DRAIN_BYTES`` within ``DRAIN_S``) and pool the connection if the body then ends."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if conn.resp is not self or self._exc is not None:
            conn.abort()
        elif self._done:
            if self._keep_alive:
                conn.resp = None
                if self._paused and conn.transport is not None:  # pooled paused, it would never see a close
                    self._paused = False
                    conn.transport.resume_reading()
                conn.pool.put(conn)
            else:
                conn.abort()
        elif drain and self._head_done and not self._to_close and conn.transport is not None:
            self._chunks.clear()
            self._buffered = 0
            self._drain_left = DRAIN_BYTES
            self._drain_timer = self._loop.call_later(conn.pool.drain_s, conn.abort)
            if self._paused:
                self._paused = False
                conn.transport.resume_reading()
        else:
            conn.abort()

    def close(self) -> None:
        """Done with the answer, whatever is left of it: close its connection."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _wait_head(self) -> None:
        while not self._head_done:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None and not self._done:
            self._exc = exc
        self._wake()


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Conn(asyncio.Protocol):
    """One upstream connection; feeds the answer in progress (:attr:`resp`)."""

    def __init__(self, pool: H1Transport, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.expires_s = pool.keepalive_s
        self.poller: select.poll | None = None  # for _readable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or resp._done:
            # Bytes nobody asked for (on an idle connection, or after the answer ended): the stream is out
            # of step; never reuse it.
            self.abort()
            return
        resp._got_bytes = True
        arrived = resp.total_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            resp._fail(TransportError("the upstream switched protocols (an upgrade nobody asked for)"))
            self.abort()
            return
        except httptools.HttpParserCallbackError as exc:
            resp._fail(exc.__context__ if isinstance(exc.__context__, TransportError)
                       else TransportError(f"malformed HTTP answer: {exc}"))
            self.abort()
            return
        except httptools.HttpParserError as exc:
            resp._fail(TransportError(f"malformed HTTP answer: {exc}"))
            self.abort()
            return
        # The body's bytes of this read are counted and the reader woken once per read, not per chunk: an
        # SSE stream sends each event as its own chunk, and a read may hold many (13 llhttp on_body calls a
        # request on the bench's canned stream).
        arrived = resp.total_bytes - arrived
        if arrived:
            resp._buffered += arrived
            if resp._buffered > resp._high_water and not resp._paused and self.transport is not None:
                resp._paused = True
                self.transport.pause_reading()
            resp._wake()
        if not resp._head_done:
            resp._head_bytes += len(data)  # every byte so far belongs to the status line and headers
            if resp._head_bytes > self.pool.max_header_bytes:
                resp._fail(TransportError(f"HTTP answer headers larger than {self.pool.max_header_bytes} bytes"))
                self.abort()

    # -- llhttp callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is None or resp._done:  # an answer nobody asked for, in the same read as the last one's end
            raise TransportError("bytes after the end of the answer")
        resp._raw = []
        resp._raw_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp._head_done:  # after the head: chunked trailers, ignored
            resp._raw.append((name, value))
            resp._raw_size += len(name) + len(value) + 4  # "name: value\r\n", as the check below counts

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            resp._interim = True  # 100 Continue / 103 Early Hints: the real answer follows
            return
        raw = resp._raw
        if resp._raw_size > self.pool.max_header_bytes:
            # Headers that arrived in one read with their end (the check in data_received sees only heads
            # that span reads).
            raise TransportError(f"HTTP answer headers larger than {self.pool.max_header_bytes} bytes")
        headers: CIMultiDict[str] = CIMultiDict([(name.decode("latin-1"), value.decode("latin-1"))
                                                 for name, value in raw])
        resp._raw = []
        resp._raw_size = 0
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            raise TransportError(f"the upstream sent Content-Encoding: {encoding}, which was not asked for")
        resp.status = status
        resp.headers = CIMultiDictProxy(headers)
        resp._to_close = ("Content-Length" not in headers
                          and "chunked" not in headers.get("Transfer-Encoding", "").lower()  # llhttp: any case
                          and status not in (204, 304))
        alive = headers.get("Keep-Alive")
        if alive is not None:
            timeout = _keepalive_timeout(alive)
            if timeout is not None:
                self.expires_s = min(self.pool.keepalive_s, max(timeout - 1.0, 0.0))  # leave a second of margin
        resp._head_done = True
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is None:
            return
        size = len(body)
        if resp._drain_left >= 0:
            resp._drain_left -= size
            if resp._drain_left < 0:
                self.abort()  # more than a body's tail: not worth keeping the connection for
            return
        resp._chunks.append(body)
        resp.total_bytes += size  # data_received does the rest of the accounting, once per read

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        if resp._interim:
            resp._interim = False
            return
        resp._keep_alive = self.parser.should_keep_alive()
        resp._done = True
        if resp._drain_left >= 0:  # released while draining: the body ended in time
            resp._drain_left = -1
            if resp._drain_timer is not None:
                resp._drain_timer.cancel()
            if resp._keep_alive:
                self.resp = None
                self.pool.put(self)
            else:
                self.abort()
            return
        resp._wake()

    # -- connection events --------------------------------------------------------------------------------
    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        resp = self.resp
        if resp is None or resp._done:
            return
        if resp._drain_timer is not None:
            resp._drain_timer.cancel()
        if resp._head_done and resp._to_close and exc is None:
            resp._done = True  # a read-to-close body ends with the connection
            resp._wake()
            return
        where = "the body ended" if resp._head_done else "an answer arrived"
        why = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        resp._fail(TransportError(f"connection closed before {where}{why}", before_response=not resp._got_bytes))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows, on the next loop iteration
        self.closed = True


class H1Transport:
    """HTTP/1.1 requests over a keep-alive pool. Use :meth:`request`; :meth:`close` at shutdown."""

    def __init__(self, *, connect_s: float, keepalive_s: float = KEEPALIVE_S,
                 max_idle: int = MAX_IDLE_PER_ORIGIN, max_header_bytes: int = MAX_HEADER_BYTES,
                 high_water: int = HIGH_WATER, drain_s: float = DRAIN_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_s = connect_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self.max_header_bytes = max_header_bytes
        self.high_water = high_water
        self.drain_s = drain_s
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Conn]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.connects = 0  # connections opened (for tests and debugging)

    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Response:
        """Send one request and wait for the answer's status and headers (not its body).

        ``body`` None sends no Content-Length (a GET). Raises :class:`TransportError` (or
        :class:`ConnectTimeout`); ValueError for a URL or header this client will not send. On
        cancellation the connection is closed."""
        if method == "HEAD":
            raise ValueError("HEAD is not supported by this client")
        origin, host, target = _split(url)
        head = _request_head(method, target, host, headers, None if body is None else len(body))
        data = head + body if body else head
        conn = self._take(origin)
        retry = conn is not None and method in IDEMPOTENT
        if conn is None:
            conn = await self._connect(origin)
        while True:
            resp = Response(conn, self.high_water)
            conn.resp = resp
            try:
                if conn.transport is None:
                    raise TransportError("connection closed before the request was sent", before_response=True)
                conn.transport.write(data)
                await resp._wait_head()
                return resp
            except TransportError as exc:
                conn.abort()
                if retry and exc.before_response:
                    # Most likely the server closed the pooled connection while it was idle: not one byte
                    # came back, and the method is safe to send again, once, on a fresh connection.
                    retry = False
                    conn = await self._connect(origin)
                    continue
                raise
            except BaseException:
                conn.abort()
                raise

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if scheme == "https" else None
        self.connects += 1
        try:
            async with asyncio.timeout(self.connect_s):
                # Happy eyeballs as aiohttp does: a host whose IPv6 route drops packets (api.anthropic.com
                # has AAAA records) costs 0.25 s, not the whole connect limit, before IPv4 is tried.
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, origin, loop), host, port, ssl=context,
                    server_hostname=host if context is not None else None,
                    happy_eyeballs_delay=0.25, interleave=1)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {host}:{port} took over {self.connect_s:g} s "
                                 f"(llm.connect_timeout_s)", before_response=True) from exc
        except OSError as exc:  # refused, DNS (gaierror), TLS (SSLError, certificate) are all OSErrors
            raise TransportError(f"cannot connect to {host}:{port}: {type(exc).__name__}: {exc}",
                                 before_response=True) from exc
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # loads the system CAs once (milliseconds)
        return self._ssl

    def _take(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            conn = idle.pop()  # LIFO: the most recently used is the least likely to have been closed
            if conn.closed:
                continue
            if now - conn.idle_since >= conn.expires_s or _readable(conn):
                conn.abort()  # expired, or the server's close (or stray bytes) is waiting on the socket
                continue
            return conn
        return None

    def put(self, conn: _Conn) -> None:
        """Park a connection whose answer ended cleanly (called by :meth:`Response.release`)."""
        if self._closed or conn.closed or conn.transport is None:
            conn.abort()
            return
        loop = conn.loop
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.keepalive_s, self._sweep)

    def _sweep(self) -> None:
        """Close expired idle connections (they hold a socket each), oldest first."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        left = False
        for idle in self._idle.values():
            keep = []
            for conn in idle:
                if conn.closed:
                    continue
                if now - conn.idle_since >= conn.expires_s:
                    conn.abort()
                else:
                    keep.append(conn)
            idle[:] = keep
            left = left or bool(keep)
        if left and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s / 2, self._sweep)

    def idle_count(self, url: str | None = None) -> int:
        """Open idle connections (to ``url``'s origin, or to all)."""
        pools: Any = [self._idle.get(_split(url)[0], [])] if url is not None else self._idle.values()
        return sum(1 for idle in pools for conn in idle if not conn.closed)

    async def close(self) -> None:
        """Close every idle connection; answers in progress are closed by their owners."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
