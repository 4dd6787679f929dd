"""The SSE judge of the /v1/messages pass-through (gateway.upstreams.anthropic_http.SSEEvents): only whole,
well-formed events go on, however the bytes are cut; what it notices decides failover and stream outcomes."""
from __future__ import annotations

import json

import pytest

from chaos.stubs.anthropic import sse
from gateway.upstreams.anthropic_http import SSEEvents

EVENTS = [
    sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                               "model": "claude-haiku-4-5", "content": []}}),
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    sse("ping", {"type": "ping"}),
    *(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": word}}) for word in ("Hé", "llo\n\n", " ✓")),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("message_stop", {"type": "message_stop"}),
]
STREAM = b"".join(EVENTS)


def feed_in_pieces(parser: SSEEvents, data: bytes, size: int) -> bytes:
    return b"".join(parser.feed(data[i:i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
def test_any_cut_of_a_healthy_stream_goes_through_whole_and_is_judged_complete(size):
    parser = SSEEvents()
    assert feed_in_pieces(parser, STREAM, size) == STREAM
    assert parser.content_started and parser.stopped and not parser.malformed and not parser.pending
    assert parser.model == "claude-haiku-4-5" and parser.error is None


def test_nothing_of_an_unfinished_event_is_forwarded():
    parser = SSEEvents()
    first_delta = STREAM.index(b"event: content_block_delta")
    out = parser.feed(STREAM[:first_delta + 20])
    assert out == STREAM[:first_delta] and parser.pending and not parser.content_started


@pytest.mark.parametrize("data", [b"{\"type\": \"content_block_delta\", \"ind", b"[1, 2]", b"\"text\"",
                                  b"{\"type\": \"ping\"} trailing", b"{\"type\": \"ping\"}{}", b"\xff\xfe{}", b"",
                                  b"[" * 5000])
def test_a_malformed_event_stops_the_stream_before_it(data):
    parser = SSEEvents()
    head = EVENTS[0] + EVENTS[3]
    out = parser.feed(head + b"event: content_block_delta\ndata: " + data + b"\n\n" + EVENTS[-1])
    assert out == head and parser.malformed and not parser.stopped
    assert parser.broken(started=True).outcome == "malformed"


def test_the_general_rule_for_unusual_events():
    """Several data lines are one JSON text; no space after the colon, CRLF line ends and surrounding
    whitespace are allowed; a comment mentioning data: is not a data line; an event without data passes."""
    parser = SSEEvents()
    unusual = [b'event: message_start\ndata:{"type": "message_start",\ndata: "message": {"model": "m2"}}\n\n',
               b': keep-alive, not data: {\nevent: ping\ndata: {"type": "ping"}\n\n',
               b'event: content_block_delta\r\ndata:\t{"type": "content_block_delta"} \r\n\n',
               b"event: ping\n\n", b": a comment about data: {\n\n"]
    stream = b"".join(unusual) + EVENTS[-1]
    assert feed_in_pieces(parser, stream, 3) == stream.replace(b"\r\n", b"\n")  # line ends relayed as LF
    assert parser.model == "m2" and parser.content_started and parser.stopped and not parser.malformed


def test_an_error_event_is_noticed_and_forwarded():
    parser = SSEEvents()
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert parser.feed(EVENTS[0] + error) == EVENTS[0] + error
    assert parser.error == {"type": "overloaded_error", "message": "Overloaded"}
    broken = parser.broken(started=False)
    assert broken.outcome == "error" and broken.status == 529 and broken.retryable
    assert json.loads(error.split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"


async def test_idle_watch_times_the_upstreams_gap_not_a_slow_reader():
    """Bytes the upstream sent that we have not read yet (a slow client holds the proxy loop in write, and
    aiohttp pauses the socket) are not an upstream stall; after they are read, silence is."""
    import asyncio

    import aiohttp
    from aiohttp.base_protocol import BaseProtocol

    from gateway.upstreams.anthropic_http import IdleWatch

    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    watch = IdleWatch(content, 0.05)
    content.feed_data(b"event: ping\ndata: {}\n\n")
    await asyncio.sleep(0.25)  # five gaps with the bytes waiting for us
    assert content.exception() is None
    chunk = await content.readany()
    watch.touch(len(chunk))
    await asyncio.sleep(0.25)  # read, and nothing more from upstream
    assert isinstance(content.exception(), TimeoutError)
    watch.cancel()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", [1, 3, 64, 10_000])
def test_extra_blank_lines_between_events_pass_and_never_spin(size):
    """SSE ignores extra blank lines; the judge once looped forever on "\n\n\n" (a frozen event loop: no
    timeout of the gateway could fire), whatever the cut."""
    stream = b"\n".join(EVENTS) + b"\n\n"  # every event followed by one or more blank lines
    parser = SSEEvents()
    out = feed_in_pieces(parser, stream, size)
    assert parser.stopped and not parser.malformed and parser.content_started
    assert out.replace(b"\n\n\n", b"\n\n").replace(b"\n\n\n", b"\n\n") == STREAM


@pytest.mark.parametrize("data", [b'{"type": "content_block_delta", "delta": {"text": "\\ud83d"}}',
                                  b'{"type": "message_delta", "usage": {"cost": NaN}}'])
def test_json_the_stdlib_reads_is_not_malformed(data):
    """orjson judges first and refuses lone surrogate escapes and NaN, which Python's json (and so the
    anthropic SDK) reads: such an event goes on, the stream is not cut as malformed."""
    parser = SSEEvents()
    event = b"event: content_block_delta\ndata: " + data + b"\n\n"
    assert parser.feed(EVENTS[0] + event + EVENTS[-1]) == EVENTS[0] + event + EVENTS[-1]
    assert not parser.malformed and parser.stopped


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 5, 64, 10_000])
def test_crlf_and_cr_line_ends_are_judged_like_lf(eol, size):
    """SSE lines may end in CRLF or CR (other Anthropic-compatible servers, proxies): the judge once only
    knew LF, so such a stream was held whole and ended as no_stop. Any cut, a CRLF split between two reads
    included, gives the LF stream and the same verdict."""
    parser = SSEEvents()
    assert feed_in_pieces(parser, STREAM.replace(b"\n", eol), size) == STREAM
    assert parser.content_started and parser.stopped and not parser.malformed and not parser.pending
    assert parser.model == "claude-haiku-4-5"
