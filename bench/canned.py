"""A canned Anthropic upstream for the bench's pass-through points: ``python -m bench.canned``.

The Python stand-in (chaos/stubs/anthropic.py, aiohttp) validates, records and builds every answer; its
CPU per request counts against both sides of a pass-through comparison and against the 2-core budget of
the scale-out bench. This server answers every ``POST /v1/messages`` with bytes recorded once, at start,
from that stand-in (``FakeAnthropic`` with the bench's short reply, bench model ``claude-sonnet-4-6``):
the same JSON body, or the same SSE events (message_start … message_stop, one HTTP chunk each, as the
stand-in writes them). An ``asyncio.Protocol`` HTTP/1.1 server: request line + headers + a
Content-Length body, keep-alive, nothing parsed but the ``"stream": true`` flag. For the bench only: no
validation, no auth check, no faults; a chunked request body gets 411, another path 404.
Prints ``{"event": "ready", "url": ..., "port": ...}`` and serves until stdin closes or SIGTERM.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any

from bench.child import emit, stop_event

MODEL = "claude-sonnet-4-6"
BENCH_BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 64,
                              "messages": [{"role": "user", "content": "How do I read a CSV file?"}]}
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_TE = re.compile(rb"\r\ntransfer-encoding:", re.I)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)
_STREAM = re.compile(rb'"stream"\s*:\s*true')
MAX_HEAD = 64 * 1024


def _head(status: str, headers: dict[str, str]) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def responses(json_body: bytes, sse_events: list[bytes]) -> tuple[bytes, bytes]:
    """Whole HTTP/1.1 responses: the JSON one (Content-Length) and the SSE one (chunked, a chunk per event)."""
    json_resp = _head("200 OK", {"Content-Type": "application/json; charset=utf-8", "request-id": "req_canned",
                                 "Content-Length": str(len(json_body))}) + json_body
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in sse_events) + b"0\r\n\r\n"
    sse_resp = _head("200 OK", {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                                "request-id": "req_canned", "Transfer-Encoding": "chunked"}) + chunks
    return json_resp, sse_resp


async def record() -> tuple[bytes, list[bytes]]:
    """The stand-in's answers to the bench body: the JSON body and the SSE events, as it sends them."""
    import aiohttp

    from bench.standins import SHORT_REPLY
    from chaos.stubs.anthropic import FakeAnthropic

    stub = FakeAnthropic(reply=SHORT_REPLY)
    await stub.start()
    try:
        headers = {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(stub.url + "/v1/messages", json=BENCH_BODY) as resp:
                assert resp.status == 200, resp.status
                json_body = await resp.read()
            async with http.post(stub.url + "/v1/messages", json={**BENCH_BODY, "stream": True}) as resp:
                assert resp.status == 200, resp.status
                raw = await resp.read()
    finally:
        await stub.stop()
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    return json_body, events


def _error(status: str, message: str, close: bool = False) -> bytes:
    body = b'{"type": "error", "error": {"type": "invalid_request_error", "message": "%s"}}' % message.encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if close:
        headers["Connection"] = "close"
    return _head(status, headers) + body


class CannedProtocol(asyncio.Protocol):
    def __init__(self, json_resp: bytes, sse_resp: bytes) -> None:
        self.json_resp, self.sse_resp = json_resp, sse_resp
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        t = self.transport
        assert t is not None
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    t.write(_error("431 Request Header Fields Too Large", "headers too large", close=True))
                    t.close()
                return
            head = self.buf[:end + 2]
            if _TE.search(head):
                t.write(_error("411 Length Required", "send a Content-Length body", close=True))
                t.close()
                return
            m = _CL.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if not head.startswith(b"POST /v1/messages "):
                t.write(_error("404 Not Found", "only POST /v1/messages is canned"))
            else:
                t.write(self.sse_resp if _STREAM.search(body) else self.json_resp)
            if _CLOSE.search(head):
                t.close()
                return


async def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, str]:
    json_body, events = await record()
    json_resp, sse_resp = responses(json_body, events)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: CannedProtocol(json_resp, sse_resp), host, port)
    bound = server.sockets[0].getsockname()[1]
    return server, f"http://{host}:{bound}"


async def main() -> None:
    stop = stop_event()
    server, url = await serve()
    emit(event="ready", url=url, port=int(url.rsplit(":", 1)[1]))
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
