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


def _raw(data: bytes, event: bytes = b"ping") -> bytes:
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


@pytest.mark.parametrize("bad", [
    # each event's data alone is no JSON object, though the two could balance into one JSON text
    _raw(b'{"type": "content_block_delta", "delta": [1') + _raw(b'2]}'),
    # a field line after the data line: SSE's data is the first line only, and it is cut short
    b'event: content_block_delta\ndata: {"type": "content_block_delta",\n"delta": {}}\n\n',
    # two data lines, each an object alone: the event's data is both, joined by a newline
    b'event: ping\ndata: {"type": "ping"}\ndata: {"type": "ping"}\n\n',
    _raw(b"1"), _raw(b'["message_stop"]'), _raw(b'{"type": "ping"} {}'),
])
@pytest.mark.parametrize("where", ["among others", "without event line", "opening the read", "alone"])
def test_events_arriving_in_one_read_are_still_judged_one_by_one(bad, where):
    """Several events in one read are judged without a Python step per event; that must still refuse each
    malformed event, whatever its neighbours, including a data line right after the previous event's blank
    line or opening the read (no event line), and an event that is the only one of its read."""
    parser = SSEEvents()
    head = b"" if where == "opening the read" else EVENTS[0] + EVENTS[3]
    if where in ("without event line", "opening the read"):
        bad = bad[bad.index(b"data:"):]
    if where == "alone":
        out = parser.feed(head) + parser.feed(bad)
    else:
        out = parser.feed(head + bad + EVENTS[4] + EVENTS[-1])
    assert out == head and parser.malformed and not parser.stopped


def test_what_events_arriving_in_one_read_tell_is_noticed_wherever_they_are():
    """A read holding many events: the content start, an error event, the model and message_stop are
    noticed in the middle of it, and a data line that opens the read (no event line) is judged too."""
    error = sse("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    start = EVENTS[0].replace(b"claude-haiku-4-5", b"m-late")
    parser = SSEEvents()
    assert parser.feed(EVENTS[2] + EVENTS[3] + EVENTS[2]) == EVENTS[2] + EVENTS[3] + EVENTS[2]
    assert parser.content_started and not parser.stopped and parser.model is None
    parser = SSEEvents()
    stream = EVENTS[2] + error + EVENTS[2]
    assert parser.feed(stream) == stream and parser.error == {"type": "api_error", "message": "boom"}
    parser = SSEEvents()
    stream = EVENTS[0] + EVENTS[2] + start + EVENTS[2]
    assert parser.feed(stream) == stream and parser.model == "m-late"
    assert not parser.content_started and not parser.stopped and parser.error is None
    parser = SSEEvents()
    stop = b'data: {"type": "message_stop"}\n\n'
    assert parser.feed(stop + EVENTS[2]) == stop + EVENTS[2] and parser.stopped


class _EventByEvent(SSEEvents):
    """The judge without its fast path: every read goes through the general rule, event by event."""

    __slots__ = ()

    def _judge_all(self, events: bytes) -> bool:
        return False


_PIECES = EVENTS + [
    b"data: 1\n\n", b'data: {"a": [1\n\n', b"data: 2]}\n\n", b": data: {\n\n", b"\n", b"id: 1\n\n", b"data:\n\n",
    b'data: {"type": "error", "error": {"type": "overloaded_error"}}\n\n', b'data: {"type": [1]}\n\n',
    b'event: x\ndata: {"type": "ping"}\ndata: {}\n\n', b'data:{"type":\n"ping"}\n\n', b"data: {}\nid: 3\n\n",
    b'data: {"type": "message_start", "message": {"model": "m3"}}\n\n', b'data: {"a": NaN}\n\n', b"data: \xff\n\n",
    b"event: data:\ndata: {}\n\n", b"\r\n", b"\r",
]


def test_the_fast_path_judges_every_read_as_the_general_rule_does():
    """Random streams (healthy events, malformed ones, unusual shapes) cut at random: the judge gives the
    same bytes and the same verdicts as the general rule alone, read after read."""
    import random

    rng = random.Random(10)
    for _ in range(3000):
        stream = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 10)))
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 3))))
        fast, general = SSEEvents(), _EventByEvent()
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            assert fast.feed(stream[a:b]) == general.feed(stream[a:b]), stream
            assert [getattr(fast, k) for k in ("content_started", "stopped", "malformed", "error", "model", "pending")] \
                == [getattr(general, k) for k in ("content_started", "stopped", "malformed", "error", "model",
                                                  "pending")], stream
            if general.malformed:
                break


@pytest.mark.timeout(10)
async def test_a_stall_before_the_first_content_fails_at_the_idle_limit(fake_anthropic):
    """open_stream starts its idle timer only before a read that may wait (a stream that came with its
    headers needs none): a model that goes quiet after its first two events, before any content, still
    fails the open with the idle limit's TimeoutError, not at a later limit of the caller."""
    import asyncio

    from gateway.upstreams.anthropic_http import AnthropicHTTP

    fake_anthropic.set_model_faults("claude-haiku-4-5", stream_stall_after=2)
    http = AnthropicHTTP(connect_s=1.0, idle_s=0.2)
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    try:
        with pytest.raises(TimeoutError, match="llm.idle_timeout_s"):
            await asyncio.wait_for(http.open_stream(fake_anthropic.url + "/v1/messages", body, headers), 5)
    finally:
        await http.close()
