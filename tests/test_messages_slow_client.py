"""/v1/messages streams to a client that reads slowly: the client's problem, never the model's.

A raw-socket client with a small receive buffer reads only when the test says so, in front of a healthy
stand-in whose answer (~4 MB) is far larger than every buffer between them, so the gateway's relay really
waits in ``write`` on the client while the model's bytes wait unread. The upstream idle limit is short
(0.3 s): it must time the model's silence, not ours.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from tests.conftest import anthropic_overrides, make_settings, state_of
from tests.test_telemetry import prometheus_series

MODEL = "claude-sonnet-4-6"
IDLE_S = 0.3
WORDS = [f"{i:04d}" + "x" * 1000 for i in range(4000)]  # ~4 MB of text, 10 words (~10 KB) per event


async def _open(host: str, port: int, body: dict[str, Any]) -> socket.socket:
    """A client socket with a 4 KB receive buffer that has sent ``body`` and read nothing yet."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    raw = json.dumps(body).encode()
    await loop.sock_sendall(sock, (f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                   f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
                                   "Connection: close\r\n\r\n").encode() + raw)
    return sock


async def _read(sock: socket.socket, n: int | None = None) -> bytes:
    """``n`` bytes (fewer at the end), or everything until the server closes (``n`` None)."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while n is None or len(got) < n:
        part = await loop.sock_recv(sock, 65536 if n is None else min(65536, n - len(got)))
        if not part:
            break
        got += part
    return bytes(got)


def _dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked HTTP/1.1 answer and whether its last (empty) chunk arrived."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head[:300]
    body = bytearray()
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body), True
        body += rest[:size]
        rest = rest[size + 2:]
    return bytes(body), False


def _text_of(sse: bytes) -> str:
    out = []
    for block in sse.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event["type"] == "content_block_delta":
                    out.append(event["delta"]["text"])
    return "".join(out)


def _streams(client: Any) -> dict[str, float]:
    telemetry = state_of(client).telemetry
    telemetry.flush()
    series = prometheus_series(telemetry.prometheus_text().decode()).get("rag.llm.streams", {})
    return {dict(labels)["outcome"]: value for labels, value in series.items() if dict(labels)["model"] == MODEL}


@pytest.fixture
async def slow_stack(gateway_factory, data_dir, fake_anthropic):
    fake_anthropic.reply = "".join(w + " " for w in WORDS).rstrip()
    fake_anthropic.delta_words = 10

    async def start(**overrides: Any) -> tuple[Any, str, int]:
        client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
            fake_anthropic, **{"llm.idle_timeout_s": IDLE_S, "cache.enabled": False, **overrides})))
        return client, client.server.host, client.server.port

    return start


REQUEST = {"model": MODEL, "max_tokens": 4096, "stream": True, "messages": [{"role": "user", "content": "long"}]}


async def test_a_client_slower_than_the_idle_limit_gets_the_whole_answer(slow_stack, fake_anthropic, caplog):
    caplog.set_level(logging.INFO, logger="rag_sidecar.access")
    client, host, port = await slow_stack()
    sock = await _open(host, port, REQUEST)
    try:
        first = await asyncio.wait_for(_read(sock, 64 * 1024), 10)  # the stream is flowing
        await asyncio.sleep(IDLE_S * 5)  # the client pauses: five idle limits without reading a byte
        rest = await asyncio.wait_for(_read(sock), 30)
    finally:
        sock.close()
    # Premise: the relay really waited on the client (one write for longer than the idle limit).
    line = next(r for r in caplog.records if getattr(r, "route", None) == "/v1/messages")
    assert line.timings_ms["client_wait"] >= IDLE_S * 4 * 1e3, line.timings_ms
    body, ended = _dechunk(first + rest)
    assert ended and b"event: error" not in body, body[-500:]
    assert body.rstrip().endswith(b'data: {"type": "message_stop"}')
    assert _text_of(body) == fake_anthropic.reply  # all of it, in order
    assert _streams(client) == {"complete": 1.0}  # not `stalled`: the model never went quiet
    guard = state_of(client).llm_router.target(MODEL).guard
    assert guard.breaker.state == "closed" and guard.stats["failed"] == 0
    assert fake_anthropic.model_counts[MODEL] == 1  # nothing failed over


async def test_an_upstream_stall_behind_a_slow_client_is_still_a_stall(slow_stack, fake_anthropic):
    """The re-arm must not hide a real stall: the model goes quiet after ~1 MB; once the slow client has
    read what was sent, the silence is the model's."""
    fake_anthropic.set_model_faults(MODEL, stream_stall_after=100)  # 97 deltas (~1 MB), then silence
    client, host, port = await slow_stack()
    sock = await _open(host, port, REQUEST)
    try:
        first = await asyncio.wait_for(_read(sock, 64 * 1024), 10)
        await asyncio.sleep(IDLE_S * 5)
        rest = await asyncio.wait_for(_read(sock), 30)
    finally:
        sock.close()
        fake_anthropic.clear_faults()
    body, ended = _dechunk(first + rest)
    assert ended and body.count(b"event: error") == 1 and b'"type": "timeout_error"' in body
    assert b"message_stop" not in body
    assert _streams(client) == {"stalled": 1.0}


@pytest.mark.parametrize("limit", ["client_idle_timeout_s", "stream_max_s"])
async def test_a_client_that_stops_reading_is_closed_as_client_slow(slow_stack, fake_anthropic, limit, caplog):
    """A client that never reads again holds its stream slot and the model's connection until one of our
    limits ends it: then the stream is `client_slow` (no degradation, not the model's breaker) and both
    connections are closed, not left waiting for a reader that never comes."""
    from gateway.routes.messages import GATEWAY

    caplog.set_level(logging.INFO, logger="rag_sidecar.access")
    overrides = ({"llm.client_idle_timeout_s": 0.5} if limit == "client_idle_timeout_s" else
                 {"llm.stream_max_s": 1.5, "llm.first_token_timeout_s": 1.0})
    client, host, port = await slow_stack(**overrides)
    streams = client.server.app[GATEWAY].streams
    sock = await _open(host, port, REQUEST)
    try:
        await asyncio.wait_for(_read(sock, 64 * 1024), 10)
        for _ in range(200):  # bounded: until the gateway gives up on the client (<= 10 s)
            if streams.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert streams.in_flight == 0, "the stream slot is still held by a client that does not read"
        with pytest.raises(ConnectionResetError):  # closed without a clean end
            while await _read(sock, 65536):
                pass
    finally:
        sock.close()
    assert _streams(client) == {"client_slow": 1.0}
    line = next(r for r in caplog.records if getattr(r, "route", None) == "/v1/messages")
    assert line.stream_outcome == "client_slow" and line.degraded is False and line.timings_ms["client_wait"] > 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # an expected end
    guard = state_of(client).llm_router.target(MODEL).guard
    assert guard.breaker.state == "closed" and guard.stats["failed"] == 0
    degradations = prometheus_series(state_of(client).telemetry.prometheus_text().decode()).get(
        "rag.degradation.count", {})
    assert not degradations, degradations
    for _ in range(100):  # the model's connection is closed too (the stand-in's handler ends)
        if fake_anthropic.stats["POST /v1/messages"].in_flight[""] == 0:
            break
        await asyncio.sleep(0.05)
    assert fake_anthropic.stats["POST /v1/messages"].in_flight[""] == 0


async def test_a_model_that_outlives_the_stream_limit_to_a_fast_client_is_a_timeout(slow_stack, fake_anthropic):
    """The client-side label needs the client's waiting to matter: a reader that keeps up, in front of a
    model still streaming at llm.stream_max_s, gets the timeout error event and the model's `timeout`
    outcome (it was labelled client_slow, and reset, once the writes' own few ms counted as waiting)."""
    import aiohttp

    fake_anthropic.reply = " ".join(f"w{i}" for i in range(6000))  # 6,000 one-word deltas, ~0.5 ms apart
    fake_anthropic.delta_words = 1
    fake_anthropic.set_model_faults(MODEL, event_interval_s=0.0005)  # thousands of writes before the limit
    client, host, port = await slow_stack(**{"llm.stream_max_s": 1.0, "llm.first_token_timeout_s": 0.8})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{host}:{port}/v1/messages", json=REQUEST) as resp:
                assert resp.status == 200
                body = await asyncio.wait_for(resp.read(), 10)
    finally:
        fake_anthropic.clear_faults()
    assert body.count(b"event: error") == 1 and b'"type": "timeout_error"' in body, body[-400:]
    assert b"message_stop" not in body
    assert _streams(client) == {"timeout": 1.0}


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_a_client_that_hangs_up_mid_stream_is_client_gone_not_an_error(slow_stack, fake_anthropic, reset,
                                                                              caplog):
    """A user closing the chat mid-answer is the commonest end of a stream that is not `complete`: the log
    says 499 / client_gone, nothing at ERROR (no "unhandled error" with a stack trace for an SRE to chase),
    the model is not blamed, and the slot and the model's connection are freed."""
    import struct

    from gateway.routes.messages import GATEWAY

    caplog.set_level(logging.INFO)
    client, host, port = await slow_stack()
    streams = client.server.app[GATEWAY].streams
    sock = await _open(host, port, REQUEST)
    try:
        await asyncio.wait_for(_read(sock, 64 * 1024), 10)  # the stream is flowing
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    for _ in range(200):  # bounded: until the gateway notices (<= 10 s)
        if streams.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert streams.in_flight == 0
    assert _streams(client) == {"client_gone": 1.0}
    line = next(r for r in caplog.records if getattr(r, "route", None) == "/v1/messages")
    assert line.status == 499 and line.stream_outcome == "client_gone" and line.degraded is False
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    guard = state_of(client).llm_router.target(MODEL).guard
    assert guard.breaker.state == "closed" and guard.stats["failed"] == 0



async def test_a_client_gone_before_the_first_byte_is_client_gone_not_an_error(data_dir, fake_anthropic, caplog):
    """The client hangs up while the model is still thinking (a Claude first token takes seconds); when the
    answer comes the relay writes to a closed connection. Served as ``web.run_app`` serves by default (the
    handler is not cancelled when its client goes away; `rag-sidecar serve` cancels it, but a write can
    still race the cancel), that was an "unhandled error" with a stack trace and a 200 in the access log."""
    from aiohttp import web

    from gateway.app import create_app
    from gateway.routes.messages import GATEWAY
    from gateway.state import STATE

    caplog.set_level(logging.INFO)
    fake_anthropic.set_model_faults(MODEL, first_token_delay_s=0.5)
    app = create_app(make_settings(data_dir, **anthropic_overrides(fake_anthropic, **{"cache.enabled": False})),
                     configure_logging=False)
    runner = web.AppRunner(app, handler_cancellation=False)  # aiohttp's default
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await asyncio.wait_for(app[STATE].ready.wait(), 60)
        streams = app[GATEWAY].streams
        sock = await _open("127.0.0.1", runner.addresses[0][1], REQUEST)
        for _ in range(100):  # bounded: until the request is in the gateway (<= 5 s)
            if streams.in_flight == 1:
                break
            await asyncio.sleep(0.05)
        sock.close()
        for _ in range(200):  # bounded: until the model answered and the relay gave up (<= 10 s)
            if streams.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert streams.in_flight == 0
        telemetry = app[STATE].telemetry
        telemetry.flush()
        series = prometheus_series(telemetry.prometheus_text().decode()).get("rag.llm.streams", {})
        assert {dict(k)["outcome"]: v for k, v in series.items()} == {"client_gone": 1.0}
        line = next(r for r in caplog.records if getattr(r, "route", None) == "/v1/messages")
        assert line.status == 499 and line.stream_outcome == "client_gone", (line.status, line.stream_outcome)
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        guard = app[STATE].llm_router.target(MODEL).guard
        assert guard.breaker.state == "closed" and guard.stats["failed"] == 0
    finally:
        fake_anthropic.clear_faults()
        await runner.cleanup()


@pytest.mark.parametrize("client_left", [False, True], ids=["client_there", "client_left"])
async def test_a_connection_error_of_ours_stays_a_500_even_when_the_client_left(data_dir, caplog, client_left):
    """Only a reset of the client's own connection is its 499: a ConnectionError of ours (a refused connect
    to something unguarded) is an unhandled error, logged with its stack, also when the client has gone."""
    from aiohttp import web

    from gateway.app import create_app

    caplog.set_level(logging.INFO)
    app = create_app(make_settings(data_dir), configure_logging=False)

    async def boom(request: web.Request) -> web.StreamResponse:
        for _ in range(200):  # bounded: until the client's hang-up is seen (<= 10 s)
            if not client_left or request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.05)
        raise ConnectionRefusedError(111, "Connection refused")

    app.router.add_get("/v1/boom", boom)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", runner.addresses[0][1]))
        await loop.sock_sendall(sock, b"GET /v1/boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if client_left:
            sock.close()
        else:
            assert (await asyncio.wait_for(_read(sock), 10)).startswith(b"HTTP/1.1 500")
            sock.close()
        for _ in range(200):  # bounded: until the access line is written (<= 10 s)
            if any(getattr(r, "route", None) == "/v1/boom" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    line = next(r for r in caplog.records if getattr(r, "route", None) == "/v1/boom")
    assert line.status == 500
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["unhandled error"]
