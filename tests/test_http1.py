"""The lean HTTP/1.1 upstream transport (gateway.upstreams.http1) against small raw asyncio servers that
misbehave on purpose: keep-alive reuse, servers that close idle connections, resets mid-body, chunked and
close-delimited bodies, oversized headers, a slow reader, cancellation, TLS."""
from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme

from gateway.upstreams.http1 import ConnectTimeout, H1Transport, TransportError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """A raw asyncio server on 127.0.0.1: ``handler(reader, writer, server)`` per connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []  # request heads, in arrival order
        self.closed = asyncio.Event()  # a connection ended (EOF from the client, or the handler returned)
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def url(self, path: str = "/v1/messages", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client that went away, or the test's end
        finally:
            writer.close()
            self.closed.set()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length body); None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        self.requests.append(head)
        return head


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a crashed or aborting server."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_each(answers: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        for answer in answers:
            if await server.read_request(reader) is None:
                return
            writer.write(answer)
            await writer.drain()
        await reader.read()  # hold the connection until the client closes it
    return handler


@pytest.fixture
async def transport() -> AsyncIterator[H1Transport]:
    t = H1Transport(connect_s=2.0)
    yield t
    await t.close()


async def fetch(t: H1Transport, url: str, method: str = "POST") -> tuple[int, Any, bytes]:
    resp = await t.request(method, url, b'{"model": "m"}' if method == "POST" else None, {"x-api-key": "k"})
    body = await resp.read()
    resp.release()
    return resp.status, resp.headers, body


async def test_keep_alive_reuses_one_connection_and_headers_are_case_insensitive(transport):
    async with Server(await answer_each([OK, OK, OK])) as srv:
        for _ in range(3):
            status, headers, body = await fetch(transport, srv.url())
            assert (status, body) == (200, b"{}")
            assert headers["content-type"] == headers["CONTENT-TYPE"] == "application/json"
        assert srv.connections == 1 and transport.connects == 1 and len(srv.requests) == 3
        assert srv.requests[0].startswith(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:")
        assert transport.idle_count(srv.url()) == 1


async def test_connection_close_and_http10_are_not_reused(transport):
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    # The server keeps both connections open: only the client's reading of the headers closes them.
    async with Server(await answer_each([close, http10, OK])) as srv:
        assert (await fetch(transport, srv.url()))[2] == b"{}"
        assert transport.idle_count() == 0
        await srv.closed.wait()  # we closed it
    async with Server(await answer_each([http10, OK])) as srv:
        await fetch(transport, srv.url())
        await fetch(transport, srv.url())
        assert srv.connections == 2


async def test_the_servers_keep_alive_timeout_shortens_the_idle_life(transport):
    short = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\n{}"
    async with Server(await answer_each([short, OK])) as srv:
        await fetch(transport, srv.url())
        await fetch(transport, srv.url())  # at once, but the server said 1 s: we keep a second of margin
        assert srv.connections == 2


async def test_chunked_with_trailers_and_close_delimited_bodies(transport):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with Server(await answer_each([chunked, OK])) as srv:
        status, headers, body = await fetch(transport, srv.url())
        assert body == b"hello world" and "X-Trailer" not in headers
        assert (await fetch(transport, srv.url()))[2] == b"{}" and srv.connections == 1  # still reusable

    async def to_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()  # then the handler returns: a clean close (FIN) ends the body

    async with Server(to_close) as srv:
        assert (await fetch(transport, srv.url()))[2] == b"until the end"
        assert transport.idle_count(srv.url()) == 0


async def test_a_reader_waiting_for_the_body_wakes_at_each_read_of_it(transport):
    """The body of a read is counted and its reader woken once per read (not per chunk): chunks that arrive
    in a later read than the headers, one event per read as a real stream runs, wake a reader that waits."""
    read = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event in (b"a" * 5, b"b" * 6):
            await read.wait()  # the reader waits for this chunk before it is sent
            read.clear()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await read.wait()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with Server(stream) as srv:
        resp = await transport.request("POST", srv.url(), b"{}", {})
        got = []
        for _ in range(3):
            read.set()
            async with asyncio.timeout(2):  # a reader nobody wakes waits forever
                got.append(await resp.readany())
        assert got == [b"aaaaa", b"bbbbbb", b""] and resp.total_bytes == 11
        resp.release()
        assert transport.idle_count() == 1


async def test_no_body_statuses_and_interim_answers(transport):
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with Server(await answer_each([no_content, interim, OK])) as srv:
        assert (await fetch(transport, srv.url()))[:3:2] == (204, b"")
        status, _, body = await fetch(transport, srv.url())
        assert (status, body) == (200, b"ok")
        assert (await fetch(transport, srv.url()))[2] == b"{}" and srv.connections == 1


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
async def test_reset_mid_body_is_an_error_never_a_short_success(transport, framing):
    head = {"content-length": b"Content-Length: 100\r\n\r\n", "chunked": b"Transfer-Encoding: chunked\r\n\r\n64\r\n",
            "close-delimited": b"\r\n"}[framing]

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"0123456789")
        await writer.drain()
        reset(writer)

    async with Server(cut) as srv:
        resp = await transport.request("POST", srv.url(), b"{}", {})
        with pytest.raises(TransportError) as info:
            await resp.read()
        assert not info.value.before_response
        resp.release()
        assert transport.idle_count() == 0


@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n\r\n", b"Transfer-Encoding: Chunked\r\n\r\n64\r\n"])
async def test_a_short_body_ended_by_a_clean_close_is_an_error(transport, framing):
    """Also with the header value in another case: llhttp decodes "Chunked" as chunked, and the body was then
    taken as read-to-close, a clean close mid-chunk ending it as a success."""
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"only ten b")
        await writer.drain()  # FIN: 90 bytes missing

    async with Server(short) as srv:
        resp = await transport.request("POST", srv.url(), b"{}", {})
        with pytest.raises(TransportError, match="before the body ended"):
            await resp.read()


async def test_header_size_is_bounded_and_garbage_is_an_error():
    t = H1Transport(connect_s=2.0, max_header_bytes=4096)
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 8000 + b"\r\nContent-Length: 0\r\n\r\n"
    fits = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n"
    try:
        async with Server(await answer_each([fits])) as srv:
            assert (await fetch(t, srv.url()))[0] == 200
        async with Server(await answer_each([big])) as srv:
            with pytest.raises(TransportError, match="larger than 4096"):
                await fetch(t, srv.url())
        async with Server(await answer_each([b"SMTP ready\r\n\r\n"])) as srv:
            with pytest.raises(TransportError, match="malformed"):
                await fetch(t, srv.url())
        gzip = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n\x1f\x8b"
        async with Server(await answer_each([gzip])) as srv:  # never asked for: not relayed as garbage
            with pytest.raises(TransportError, match="Content-Encoding: gzip"):
                await fetch(t, srv.url())
    finally:
        await t.close()


async def test_a_connection_closed_while_idle_is_not_used(transport):
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()  # then return: the server closes the idle keep-alive connection

    async with Server(one_then_close) as srv:
        await fetch(transport, srv.url())
        await srv.closed.wait()
        assert (await fetch(transport, srv.url()))[2] == b"{}"  # on a fresh connection
        assert srv.connections == 2 and len(srv.requests) == 2


async def test_a_close_not_yet_seen_by_the_loop_is_caught_before_the_request_is_sent(transport):
    """The server's FIN has reached our socket but the event loop has not run since: the pooled
    connection looks alive. Sending on it would lose a POST; the readability check drops it."""
    served: list[int] = []
    gone = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # a blocking server in a thread, so the test can wait without running the loop
        for n in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                served.append(n)
                conn.sendall(OK)
                if n == 0:
                    conn.shutdown(socket.SHUT_WR)
            gone.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/messages"
    try:
        resp = await transport.request("POST", url, b"{}", {})
        assert await resp.read() == b"{}"
        resp.release()
        gone.wait(5)  # blocking on purpose: the loop must not see the close
        assert transport.idle_count() == 1  # the loop has not noticed
        assert (await fetch(transport, url))[2] == b"{}"
        assert served == [0, 1] and transport.connects == 2
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_reused_connection_that_fails_before_any_byte(transport, method):
    """GET is sent once more on a fresh connection; a POST is not (it may have been applied: the guard
    decides); neither is retried once a byte of the answer arrived."""
    async def answer_once_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                    server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)  # the second request: read, never answered
        reset(writer)

    async with Server(answer_once_then_drop) as srv:
        await fetch(transport, srv.url(), method)
        if method == "GET":
            assert (await fetch(transport, srv.url(), method))[2] == b"{}"
            assert len(srv.requests) == 3 and srv.connections == 2  # dropped once, retried once
        else:
            with pytest.raises(TransportError) as info:
                await fetch(transport, srv.url(), method)
            assert info.value.before_response
            assert len(srv.requests) == 2 and srv.connections == 1  # never sent twice

    async def drop_after_a_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 2")
        await writer.drain()
        reset(writer)

    async with Server(drop_after_a_byte) as srv:
        await fetch(transport, srv.url(), "GET")
        with pytest.raises(TransportError) as info:
            await fetch(transport, srv.url(), "GET")
        assert not info.value.before_response and len(srv.requests) == 2


async def test_a_slow_reader_pauses_the_socket_and_resumes_it():
    size = 16 << 20
    t = H1Transport(connect_s=2.0, high_water=64 << 10)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        await reader.read()

    try:
        async with Server(flood) as srv:
            resp = await t.request("POST", srv.url(), b"{}", {})
            for _ in range(1000):  # bounded: until the reader's buffer passes the mark
                if resp._paused:
                    break
                await asyncio.sleep(0)
            assert resp._paused
            held = resp.total_bytes
            for _ in range(200):  # loop turns enough to take megabytes from a socket nobody paused
                await asyncio.sleep(0)
            assert resp.total_bytes == held <= (64 << 10) + (256 << 10)  # + one socket read
            got = 0
            while chunk := await resp.readany():
                got += len(chunk)
            assert got == size
            resp.release()
            assert t.idle_count() == 1
    finally:
        await t.close()


async def test_a_drained_release_keeps_the_connection_only_if_the_body_ends_soon():
    """An SSE stream's message_stop can come before the body's last chunk: release(drain=True) reads and
    drops the tail and pools the connection when the body ends in time; a tail too long or too late
    closes it."""
    t = H1Transport(connect_s=2.0, drain_s=0.3)
    tail_now = asyncio.Event()

    def answer(tail: bytes) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            while await server.read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nstop!\r\n")
                await tail_now.wait()
                tail_now.clear()
                writer.write(tail)
        return handler

    async def released_early() -> None:
        resp = await t.request("POST", srv.url(), b"{}", {})
        assert await resp.readany() == b"stop!"
        resp.release(drain=True)
        tail_now.set()

    try:
        async with Server(answer(b"0\r\n\r\n")) as srv:
            await released_early()
            for _ in range(500):  # bounded wait for the tail to arrive
                if t.idle_count():
                    break
                await asyncio.sleep(0.01)
            assert t.idle_count() == 1
            await released_early()  # on the same connection
            assert srv.connections == 1
        for tail in (b"%x\r\n" % (128 << 10) + b"x" * (128 << 10) + b"\r\n0\r\n\r\n", b""):  # too long; never ends
            async with Server(answer(tail)) as srv:
                await released_early()
                await asyncio.wait_for(srv.closed.wait(), 5)  # we closed it
                assert t.idle_count(srv.url()) == 0
    finally:
        await t.close()


async def test_cancellation_closes_the_connection(transport):
    async def headers_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                   server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await reader.read()  # until the client closes

    async with Server(headers_then_silence) as srv:
        resp = await transport.request("POST", srv.url(), b"{}", {})
        reading = asyncio.create_task(resp.read())
        await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        resp.release()  # half read: closed, never pooled
        await asyncio.wait_for(srv.closed.wait(), 5)
        assert transport.idle_count() == 0

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await reader.read()

    async with Server(never_answer) as srv:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await transport.request("POST", srv.url(), b"{}", {})
        await asyncio.wait_for(srv.closed.wait(), 5)  # the waiting connection was closed
        assert transport.idle_count() == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, sni: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
    return context


async def test_https_verifies_the_certificate_and_sends_sni(ca):
    sni: list[str] = []
    client = ssl.create_default_context()
    ca.configure_trust(client)
    t = H1Transport(connect_s=2.0, ssl_context=client)
    try:
        async with Server(await answer_each([OK, OK]), ssl_context=server_tls(ca, sni)) as srv:
            url = srv.url(scheme="https", host="localhost")
            assert (await fetch(t, url))[2] == b"{}"
            assert (await fetch(t, url))[2] == b"{}"
            assert sni == ["localhost"] and srv.connections == 1  # kept alive over TLS too
            # The default context (system CAs) refuses a certificate from an unknown CA.
            default = H1Transport(connect_s=2.0)
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED") as info:
                await fetch(default, url)
            assert info.value.before_response
            await default.close()
    finally:
        await t.close()


async def test_connect_timeout_covers_the_tls_handshake():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await reader.read()  # accepts TCP, never speaks TLS

    t = H1Transport(connect_s=0.2)
    try:
        async with Server(silent) as srv:
            with pytest.raises(ConnectTimeout, match="took over 0.2 s"):
                await fetch(t, srv.url(scheme="https"))
    finally:
        await t.close()


async def test_idle_connections_expire():
    t = H1Transport(connect_s=2.0, keepalive_s=0.05)
    try:
        async with Server(await answer_each([OK, OK])) as srv:
            await fetch(t, srv.url())
            assert t.idle_count() == 1
            await asyncio.wait_for(srv.closed.wait(), 5)  # the sweeper closed it
            assert t.idle_count() == 0
            await fetch(t, srv.url())
            assert srv.connections == 2
    finally:
        await t.close()


@pytest.mark.parametrize("kind", ["h1", "aiohttp"])
async def test_a_cookie_set_for_one_request_is_not_sent_with_the_next(kind):
    """The pass-through is shared by every client: a Set-Cookie answering one client's request must not be
    replayed on another's (aiohttp's default session keeps a jar and would)."""
    from aiohttp import web

    from gateway.upstreams.transport import make_transport

    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.json_response({"ok": True})
        resp.set_cookie("__cf_bm", "client-a-affinity", path="/")
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://localhost:{runner.addresses[0][1]}/v1/messages"  # a name: jars ignore cookies of IPs
    transport = make_transport(kind, connect_s=5.0)
    try:
        for _ in range(2):
            resp = await transport.request("POST", url, b"{}", {"content-type": "application/json"})
            await resp.read()
            resp.release()
    finally:
        await transport.close()
        await runner.cleanup()
    assert seen == [None, None]
