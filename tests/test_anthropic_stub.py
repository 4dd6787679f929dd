"""The Anthropic stand-in spoken to by the real SDK, and AnthropicLLM's error mapping under each fault."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import httpx2
import pytest

from chaos.stubs.anthropic import NO_CONTEXT_REPLY, FakeAnthropic, first_passage_sentence
from fallback.documents import Chunk
from gateway.config import LLMConfig
from gateway.upstreams.anthropic_llm import AnthropicLLM, build_user_message, generation_of
from gateway.upstreams.base import LLM
from resilience.errors import Reason, UpstreamError

PRIMARY, FALLBACK = "claude-sonnet-4-6", "claude-haiku-4-5"
KEY = "test-key"
CHUNKS = [
    Chunk(id="c1", title="Retry budgets", text="A retry budget caps retries at a share of traffic. It stops storms."),
    Chunk(id="c2", title="Breakers", text="A circuit breaker fails fast while a dependency is down."),
]
ANSWER = "A retry budget caps retries at a share of traffic. [1]"
PROMPT = build_user_message("What caps retries?", CHUNKS)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(api_key=KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    c = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0, timeout=5.0)
    yield c
    await c.close()


def make_llm(fake: FakeAnthropic, **overrides: object) -> AnthropicLLM:
    cfg = {"backend": "anthropic", "model": PRIMARY, "fallback_model": FALLBACK, "api_key": KEY,
           "base_url": fake.url, "timeout_s": 5.0, **overrides}
    return AnthropicLLM(LLMConfig.model_validate(cfg))


@pytest.fixture
async def llm(fake: FakeAnthropic) -> AsyncIterator[AnthropicLLM]:
    backend = make_llm(fake)
    yield backend
    await backend.close()


async def collect(stream: AsyncIterator[str], into: list[str]) -> None:
    async for delta in stream:
        into.append(delta)


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# -- the real SDK against the stand-in ------------------------------------------------------------
async def test_async_client_gets_a_message_quoting_passage_one(fake: FakeAnthropic,
                                                                client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=PRIMARY, max_tokens=100, messages=user(PROMPT),
                                       extra_headers={"X-Request-Id": "rid-1"})

    assert msg.type == "message" and msg.role == "assistant" and msg.model == PRIMARY
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == ANSWER
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.output_tokens == len(ANSWER.split()) and msg.usage.input_tokens > 0
    seen = fake.requests[-1]
    assert (seen.model, seen.stream, seen.request_id) == (PRIMARY, False, "rid-1")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert fake.model_counts == {PRIMARY: 1}


async def test_async_stream_yields_events_in_api_order(client: anthropic.AsyncAnthropic) -> None:
    stream = await client.messages.create(model=PRIMARY, max_tokens=100, messages=user(PROMPT), stream=True)
    events = [event async for event in stream]

    types = [e.type for e in events]
    n_deltas = types.count("content_block_delta")
    assert types == ["message_start", "content_block_start", *["content_block_delta"] * n_deltas,
                     "content_block_stop", "message_delta", "message_stop"]
    assert n_deltas > 1
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == ANSWER
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == len(ANSWER.split())


async def test_stream_helper_accumulates_the_final_text(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(model=PRIMARY, max_tokens=100, messages=user(PROMPT)) as stream:
        assert await stream.get_final_text() == ANSWER


async def test_raw_sse_has_event_lines_and_a_ping_in_order(fake: FakeAnthropic) -> None:
    body = {"model": PRIMARY, "max_tokens": 100, "messages": user(PROMPT), "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()

    names = [line.removeprefix("event: ") for line in raw.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}


async def test_sync_client_json_and_stream(fake: FakeAnthropic) -> None:
    def call() -> tuple[str, str]:
        with anthropic.Anthropic(api_key=KEY, base_url=fake.url, max_retries=0, timeout=5.0) as c:
            msg = c.messages.create(model=FALLBACK, max_tokens=100, messages=user(PROMPT))
            with c.messages.stream(model=FALLBACK, max_tokens=100, messages=user(PROMPT)) as s:
                streamed = "".join(s.text_stream)
            return msg.content[0].text, streamed

    # The sync client blocks, so it runs in a thread while the stand-in serves on this loop.
    text, streamed = await asyncio.to_thread(call)
    assert text == streamed == ANSWER
    assert [r.stream for r in fake.requests] == [False, True]


async def test_models_list_for_health_checks(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    assert PRIMARY in [m.id for m in page.data] and FALLBACK in [m.id for m in page.data]


async def test_max_tokens_truncates_and_says_so(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=PRIMARY, max_tokens=3, messages=user(PROMPT))
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "A retry budget "


async def test_reply_without_passages_and_reply_override(fake: FakeAnthropic,
                                                         client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=PRIMARY, max_tokens=100, messages=user("Hello there"))
    assert msg.content[0].text == NO_CONTEXT_REPLY

    fake.reply = lambda body: f"echo {body['model']}"
    msg = await client.messages.create(model=FALLBACK, max_tokens=100, messages=user(PROMPT))
    assert msg.content[0].text == f"echo {FALLBACK}"


def test_first_sentence_drops_the_title_but_keeps_dashes_in_text() -> None:
    assert first_passage_sentence("x\n[1] Title — Body one. Two.") == "Body one."
    assert first_passage_sentence("[1] It works. Then — later — more.") == "It works."
    assert first_passage_sentence("[2] Wrapped\nacross lines! Next.\n\n[3] Other.") == "Wrapped across lines!"
    assert first_passage_sentence("no passages here") is None


# -- auth and validation --------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}])
async def test_either_auth_header_is_accepted(fake: FakeAnthropic, headers: dict[str, str]) -> None:
    body = {"model": PRIMARY, "max_tokens": 50, "messages": user(PROMPT)}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["content"][0]["text"] == ANSWER


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"Authorization": "Basic " + KEY}])
async def test_missing_or_wrong_key_is_401_authentication_error(fake: FakeAnthropic,
                                                                headers: dict[str, str]) -> None:
    body = {"model": PRIMARY, "max_tokens": 50, "messages": user(PROMPT)}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 401
            payload = await resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "authentication_error"


async def test_wrong_key_maps_to_a_non_retryable_error_that_is_not_the_callers(fake: FakeAnthropic) -> None:
    backend = make_llm(fake, api_key="wrong")
    try:
        with pytest.raises(UpstreamError) as info:
            await backend.generate("q", CHUNKS)
    finally:
        await backend.close()
    assert (info.value.status, info.value.retryable, info.value.caller_fault) == (401, False, False)
    assert isinstance(info.value.__cause__, anthropic.AuthenticationError)


@pytest.mark.parametrize("missing", ["model", "messages", "max_tokens"])
async def test_missing_field_is_400_invalid_request_error(fake: FakeAnthropic, missing: str) -> None:
    body = {"model": PRIMARY, "max_tokens": 50, "messages": user(PROMPT)}
    del body[missing]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
            assert resp.status == 400
            payload = await resp.json()
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"].startswith(missing)


async def test_sampling_params_are_rejected_on_the_new_api_version(fake: FakeAnthropic) -> None:
    body = {"model": PRIMARY, "max_tokens": 50, "messages": user(PROMPT), "temperature": 1.0}
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as http:
        async with http.post(f"{fake.url}/v1/messages", json=body,
                             headers={"anthropic-version": "2026-10-21"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == "temperature: Extra inputs are not permitted"
        async with http.post(f"{fake.url}/v1/messages", json=body,
                             headers={"anthropic-version": "2023-06-01"}) as resp:
            assert resp.status == 200


# -- AnthropicLLM ---------------------------------------------------------------------------------
async def test_generate_sends_numbered_passages_and_returns_a_generation(fake: FakeAnthropic,
                                                                         llm: AnthropicLLM) -> None:
    assert isinstance(llm, LLM)
    gen = await llm.generate("What caps retries?", CHUNKS, request_id="rid-42")

    assert gen.text == ANSWER and gen.model == PRIMARY and gen.stop_reason == "end_turn"
    assert gen.usage["output_tokens"] == len(ANSWER.split()) and gen.usage["input_tokens"] > 0
    seen = fake.requests[-1]
    assert seen.request_id == "rid-42"
    assert seen.body["system"] == llm.config.system_prompt
    assert seen.body["max_tokens"] == llm.config.max_tokens
    assert "temperature" not in seen.body and seen.headers["anthropic-version"] == "2026-10-21"
    text = seen.body["messages"][0]["content"]
    assert "[1] Retry budgets — A retry budget caps" in text and "[2] Breakers — A circuit" in text
    assert text.rstrip().endswith("Question: What caps retries?")


async def test_stream_yields_the_same_answer_in_pieces(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    stream = llm.stream("What caps retries?", CHUNKS, model=FALLBACK, request_id="rid-s")
    deltas: list[str] = []
    await collect(stream, deltas)

    assert len(deltas) > 1 and "".join(deltas) == ANSWER
    assert (stream.result.text, stream.result.model, stream.result.stop_reason) == (ANSWER, FALLBACK, "end_turn")
    assert fake.requests[-1].stream and fake.requests[-1].request_id == "rid-s"


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "retryable", "caller_fault", "reason"), [
    (429, True, False, Reason.RATE_LIMITED),
    (500, True, False, Reason.ERROR),
    (503, True, False, Reason.ERROR),
    (529, True, False, Reason.OVERLOADED),
    (400, False, True, Reason.ERROR),
    (413, False, True, Reason.ERROR),
    (403, False, False, Reason.ERROR),
    (404, False, False, Reason.ERROR),
])
async def test_status_faults_map_to_upstream_errors(fake: FakeAnthropic, llm: AnthropicLLM, status: int,
                                                    retryable: bool, caller_fault: bool, reason: Reason) -> None:
    fake.set_faults(status=status)
    with pytest.raises(UpstreamError) as info:
        await llm.generate("q", CHUNKS)
    err = info.value
    assert (err.status, err.retryable, err.caller_fault, err.reason) == (status, retryable, caller_fault, reason)


async def test_429_carries_retry_after_in_seconds(fake: FakeAnthropic, llm: AnthropicLLM,
                                                  client: anthropic.AsyncAnthropic) -> None:
    fake.set_faults(status=429, retry_after_s=1.5)
    with pytest.raises(anthropic.RateLimitError) as raw:
        await client.messages.create(model=PRIMARY, max_tokens=10, messages=user("hi"))
    assert raw.value.response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert raw.value.response.headers["retry-after-ms"] == "1500"
    assert raw.value.body["error"]["type"] == "rate_limit_error"

    with pytest.raises(UpstreamError) as info:
        await llm.generate("q", CHUNKS)
    assert info.value.retry_after_s == pytest.approx(1.5)  # retry-after-ms wins over retry-after


async def test_529_is_the_sdks_overloaded_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.set_faults(status=529)
    with pytest.raises(anthropic.OverloadedError) as info:
        await client.messages.create(model=PRIMARY, max_tokens=10, messages=user("hi"))
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                               "request_id": info.value.body["request_id"]}


async def test_status_fault_on_a_stream_request_fails_before_any_text(fake: FakeAnthropic,
                                                                      llm: AnthropicLLM) -> None:
    fake.set_faults(status=529, retry_after_s=3)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await collect(llm.stream("q", CHUNKS), deltas)
    assert deltas == [] and (info.value.status, info.value.retryable, info.value.retry_after_s) == (529, True, 3.0)


async def test_model_scoped_fault_fails_primary_and_serves_fallback(fake: FakeAnthropic,
                                                                    llm: AnthropicLLM) -> None:
    fake.set_faults(status=529, models=[PRIMARY])

    with pytest.raises(UpstreamError) as info:
        await llm.generate("What caps retries?", CHUNKS)
    gen = await llm.generate("What caps retries?", CHUNKS, model=llm.config.fallback_model)

    assert info.value.status == 529
    assert (gen.text, gen.model) == (ANSWER, FALLBACK)
    assert fake.model_counts == {PRIMARY: 1, FALLBACK: 1}
    assert fake.stats["POST /v1/messages"].faulted == 1


async def test_hang_is_cut_by_the_callers_deadline(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(hang=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await llm.generate("q", CHUNKS)
    assert 0.25 < time.monotonic() - started < 2.0
    assert fake.stats["POST /v1/messages"].by_fault["hang"] == 1


async def test_clearing_a_hang_releases_the_held_request(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(hang=True)
    call = asyncio.create_task(llm.generate("What caps retries?", CHUNKS))
    async with asyncio.timeout(5):
        await fake.wait_for_requests(1)
    assert not call.done()

    fake.clear_faults()
    async with asyncio.timeout(5):
        assert (await call).text == ANSWER


async def test_stop_drops_hung_connections(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(hang=True)
    call = asyncio.create_task(llm.generate("q", CHUNKS))
    async with asyncio.timeout(5):
        await fake.wait_for_requests(1)
        await fake.stop()
        with pytest.raises(UpstreamError) as info:
            await call
    assert info.value.status is None and info.value.retryable


async def test_reset_is_a_retryable_connection_error(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(reset=True)
    with pytest.raises(UpstreamError) as info:
        await llm.generate("q", CHUNKS)
    assert info.value.status is None and info.value.retryable
    assert isinstance(info.value.__cause__, anthropic.APIConnectionError)


async def test_sdk_timeout_becomes_timeout_error(fake: FakeAnthropic) -> None:
    fake.set_faults(latency_s=2.0)
    backend = make_llm(fake, timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError) as info:
            await backend.generate("q", CHUNKS)
    finally:
        await backend.close()
    assert isinstance(info.value.__cause__, anthropic.APITimeoutError)


async def test_latency_delays_the_answer(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(latency_s=0.2)
    started = time.monotonic()
    assert (await llm.generate("What caps retries?", CHUNKS)).text == ANSWER
    assert time.monotonic() - started >= 0.2


def test_generation_reads_text_blocks_model_stop_reason_and_usage_from_the_raw_body() -> None:
    """``generate`` reads the raw JSON (not the SDK's Message model): only text blocks make the answer."""
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "A "},
                        {"type": "tool_use", "id": "t", "name": "n", "input": {}}, {"type": "text", "text": "[1]"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 0}}
    gen = generation_of(json.dumps(body).encode())
    assert (gen.text, gen.model, gen.stop_reason) == ("A [1]", "claude-x", "max_tokens")
    assert gen.usage == {"input_tokens": 7, "output_tokens": 2}


@pytest.mark.parametrize("body", [b'{"type": "message", "model": "m"}', b'{"content": [], "model": 3}',
                                  b'{"content": [{"type": "text"}], "model": "m"}', b"[]", b'"text"', b"{"])
def test_a_body_that_is_not_a_message_is_a_retryable_502(body: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        generation_of(body)
    assert (info.value.status, info.value.retryable) == (502, True)


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_body_is_a_retryable_502(fake: FakeAnthropic, llm: AnthropicLLM, stream: bool) -> None:
    fake.set_faults(malformed=True)
    with pytest.raises(UpstreamError) as info:
        if stream:
            await collect(llm.stream("q", CHUNKS), [])
        else:
            await llm.generate("q", CHUNKS)
    assert (info.value.status, info.value.retryable) == (502, True)


async def test_stream_cut_yields_partial_text_then_a_non_retryable_error(fake: FakeAnthropic,
                                                                         llm: AnthropicLLM) -> None:
    fake.set_faults(stream_cut_after=5)  # message_start, content_block_start, ping, 2 deltas
    stream = llm.stream("What caps retries?", CHUNKS)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await collect(stream, deltas)
    with pytest.raises(UpstreamError):
        await anext(stream)  # still failed, not a StopAsyncIteration that would look like a short answer

    assert deltas == ["A retry ", "budget caps "]
    assert (info.value.status, info.value.retryable) == (None, False)
    # What the SDK lets through unwrapped when the socket drops mid-body (over its aiohttp transport, a
    # ReadError; over httpx2's own, a RemoteProtocolError):
    assert isinstance(info.value.__cause__, httpx2.TransportError)


async def test_stream_cut_before_any_text_is_still_retryable(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(stream_cut_after=2)
    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await collect(llm.stream("q", CHUNKS), deltas)
    assert deltas == [] and info.value.retryable


async def test_a_stream_that_failed_before_any_text_retries_on_the_next_read(fake: FakeAnthropic,
                                                                             llm: AnthropicLLM) -> None:
    fake.set_faults(stream_cut_after=2)
    stream = llm.stream("What caps retries?", CHUNKS)
    with pytest.raises(UpstreamError) as info:
        await anext(stream)  # what a guard wraps: "the next delta"
    assert info.value.retryable

    fake.clear_faults()
    deltas: list[str] = []
    await collect(stream, deltas)  # the guard's retry: a fresh request
    assert "".join(deltas) == ANSWER and stream.attempts == 2 and len(fake.requests) == 2


async def test_a_failure_after_text_is_final_never_a_silent_end(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(stream_stall_after=4)
    stream = llm.stream("What caps retries?", CHUNKS)
    assert await anext(stream) == "A retry "
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await anext(stream)

    fake.clear_faults()
    with pytest.raises(UpstreamError) as info:
        await anext(stream)
    assert info.value.retryable is False and stream.attempts == 1 and len(fake.requests) == 1


async def test_mid_stream_overload_is_an_error_event(fake: FakeAnthropic, llm: AnthropicLLM,
                                                     client: anthropic.AsyncAnthropic) -> None:
    fake.set_faults(status=529, stream_cut_after=4)
    raw = await client.messages.create(model=PRIMARY, max_tokens=50, messages=user(PROMPT), stream=True)
    with pytest.raises(anthropic.APIStatusError) as sdk_err:
        async for _ in raw:
            pass
    # The SDK raises a plain APIStatusError carrying the stream's 200, not OverloadedError.
    assert type(sdk_err.value) is anthropic.APIStatusError and sdk_err.value.status_code == 200
    assert sdk_err.value.type == "overloaded_error"

    deltas: list[str] = []
    with pytest.raises(UpstreamError) as info:
        await collect(llm.stream("What caps retries?", CHUNKS), deltas)
    assert deltas == ["A retry "]
    assert (info.value.status, info.value.retryable, info.value.reason) == (529, False, Reason.OVERLOADED)


async def test_stream_stall_past_the_read_timeout_is_non_retryable(fake: FakeAnthropic) -> None:
    fake.set_faults(stream_stall_after=4)
    backend = make_llm(fake, timeout_s=0.3)
    deltas: list[str] = []
    try:
        with pytest.raises(UpstreamError) as info:
            await collect(backend.stream("What caps retries?", CHUNKS), deltas)
    finally:
        await backend.close()
    assert deltas == ["A retry "]
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, httpx2.ReadTimeout)


async def test_cleared_stall_resumes_the_stream(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(stream_stall_after=4)
    stream = llm.stream("What caps retries?", CHUNKS)
    first = await anext(stream)
    nxt = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({nxt}, timeout=0.2)
    assert not done  # stalled

    fake.clear_faults()
    rest = [await nxt]
    async with asyncio.timeout(5):
        await collect(stream, rest)
    assert first + "".join(rest) == ANSWER


async def test_error_rate_is_seeded_and_counted(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    fake.set_faults(status=503, error_rate=0.5)
    outcomes = []
    for _ in range(20):
        try:
            await llm.generate("q", CHUNKS)
            outcomes.append("ok")
        except UpstreamError:
            outcomes.append("503")
    stats = fake.stats["POST /v1/messages"]
    assert 0 < outcomes.count("503") < 20
    assert (stats.requests, stats.faulted) == (20, outcomes.count("503"))

    again = FakeAnthropic(api_key=KEY, seed=0)
    again.set_faults(status=503, error_rate=0.5)
    draws = [bool(again.injector.rng.random() < 0.5) for _ in range(20)]
    assert ["503" if d else "ok" for d in draws] == outcomes


# -- control endpoints ----------------------------------------------------------------------------
async def test_faults_control_endpoint_over_http(fake: FakeAnthropic, llm: AnthropicLLM) -> None:
    async with aiohttp.ClientSession(base_url=fake.url) as http:
        async with http.put("/__faults__", json={"status": 503, "retry_after_s": 2}) as resp:
            assert resp.status == 200
        async with http.get("/__faults__") as resp:
            current = await resp.json()
        assert (current["status"], current["retry_after_s"], current["hang"]) == (503, 2, False)
        with pytest.raises(UpstreamError) as info:
            await llm.generate("q", CHUNKS)
        assert (info.value.status, info.value.retry_after_s) == (503, 2.0)

        async with http.patch("/__faults__", json={"models": [FALLBACK]}) as resp:
            assert (await resp.json())["status"] == 503  # merged, not replaced
        assert (await llm.generate("What caps retries?", CHUNKS)).text == ANSWER

        async with http.put("/__faults__", json={"stauts": 503}) as resp:
            assert resp.status == 400 and "stauts" in (await resp.json())["error"]
        async with http.put("/__faults__", json={"hang": "sometimes"}) as resp:
            assert resp.status == 400
        async with http.put("/__faults__", json={"hang": True}) as resp:
            assert resp.status == 200

        call = asyncio.create_task(llm.generate("What caps retries?", CHUNKS))
        async with asyncio.timeout(5):
            await fake.wait_for_requests(3)
        async with http.delete("/__faults__") as resp:
            assert (await resp.json())["hang"] is False
        async with asyncio.timeout(5):
            assert (await call).text == ANSWER

        async with http.get("/__stats__") as resp:
            stats = await resp.json()
    route = stats["POST /v1/messages"]
    assert {k: route[k] for k in ("requests", "faulted", "by_fault")} == {
        "requests": 3, "faulted": 2, "by_fault": {"status": 1, "hang": 1}}
    # One call at a time (each attempt after the previous one ended): the most served at once is 1.
    assert route["peak_in_flight"] == 1 and set(route["peak_in_flight_by_model"].values()) == {1}
    assert "GET /__faults__" not in stats


def test_python_m_entry_serves_until_terminated() -> None:
    faults = json.dumps({"status": 529, "models": [PRIMARY]})
    with subprocess.Popen([sys.executable, "-m", "chaos.stubs.anthropic", "--port", "0", "--faults", faults],
                          cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            with anthropic.Anthropic(api_key="any", base_url=info["url"], max_retries=0, timeout=5.0) as c:
                with pytest.raises(anthropic.OverloadedError):
                    c.messages.create(model=PRIMARY, max_tokens=10, messages=user("hi"))
                assert c.messages.create(model=FALLBACK, max_tokens=10, messages=user("hi")).content
                assert c.models.list().data  # a model-scoped fault skips requests without a model
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0


async def test_recorded_requests_are_bounded():
    class SmallMemory(FakeAnthropic):
        keep_requests = 3

    fake = SmallMemory()
    await fake.start()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(5):
                async with session.post(fake.url + "/v1/messages", headers={"x-api-key": "k"},
                                        json={"model": "m", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": f"q{i}"}]}) as resp:
                    assert resp.status == 200
        assert len(fake.requests) == 3 and fake.requests_total == 5
        assert fake.requests[-1].body["messages"][0]["content"] == "q4"
    finally:
        await fake.stop()
