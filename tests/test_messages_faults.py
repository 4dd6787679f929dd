"""/v1/messages in front of a faulty Anthropic: the real anthropic SDK (sync and async, ``create`` and
``stream``) through the sidecar, one fault per model, interleaved with healthy traffic to another model
and to /v1/query.

Each fault asserts what the client got (a complete answer, or a clean Anthropic error — never a
truncated success), the attempts the stand-in saw per model, and that the other models' breakers stayed
closed. Limits are shrunk (first token 1 s, idle gap 1 s, request deadline 3 s) so faults cost seconds.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest

from gateway.routes.messages import GATEWAY
from tests.conftest import anthropic_overrides, make_settings, state_of

FAULTY = "claude-sonnet-4-6"  # the model the faults hit
HEALTHY = "claude-opus-4-6"  # another model (and /v1/query's), never faulted
FALLBACK = "claude-haiku-4-5"  # FAULTY's fallback
PROMPT = [{"role": "user", "content": "[1] Tea is brewed at 70 degrees. Question: how hot?"}]
ANSWER = "Tea is brewed at 70 degrees. [1]"
MODES = ("async_create", "async_stream", "sync_create", "sync_stream")


@pytest.fixture
async def stack(gateway_factory, data_dir, fake_anthropic):
    async for parts in _stack(gateway_factory, data_dir, fake_anthropic):
        yield parts


@pytest.fixture
async def aiohttp_stack(gateway_factory, data_dir, fake_anthropic):
    """The same stack with the previous upstream client (llm.transport: aiohttp)."""
    async for parts in _stack(gateway_factory, data_dir, fake_anthropic, transport="aiohttp"):
        yield parts


async def _stack(gateway_factory, data_dir, fake_anthropic, transport="h1"):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic, **{
        "llm.model": HEALTHY, "llm.first_token_timeout_s": 1.0, "llm.idle_timeout_s": 1.0,
        "llm.request_timeout_s": 3.0, "llm.context_window_fallbacks": {FAULTY: [HEALTHY]},
        "cache.enabled": False, "llm.transport": transport})))
    assert type(client.server.app[GATEWAY].http.transport).__name__ == {"h1": "H1Transport",
                                                                        "aiohttp": "AiohttpTransport"}[transport]
    base = str(client.make_url("")).rstrip("/")
    sdk = anthropic.AsyncAnthropic(api_key="sk-ant-client-0000", base_url=base, max_retries=0)
    sync = anthropic.Anthropic(api_key="sk-ant-client-0000", base_url=base, max_retries=0)
    yield client, sdk, sync, fake_anthropic
    await sdk.close()
    sync.close()


@dataclass
class Got:
    """What one client call ended with."""

    text: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    error: anthropic.APIStatusError | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def call(sdk: anthropic.AsyncAnthropic, sync: anthropic.Anthropic, mode: str, model: str,
               messages: list[dict[str, Any]] = PROMPT) -> Got:
    args = {"model": model, "max_tokens": 64, "messages": messages}

    async def async_create() -> Got:
        raw = await sdk.messages.with_raw_response.create(**args)
        msg = await raw.parse()
        return Got(msg.content[0].text, msg.model, msg.stop_reason, headers=dict(raw.headers))

    async def async_stream() -> Got:
        async with sdk.messages.stream(**args) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        return Got(text, final.model, final.stop_reason, headers=dict(s.response.headers))

    def sync_create() -> Got:
        raw = sync.messages.with_raw_response.create(**args)
        msg = raw.parse()
        return Got(msg.content[0].text, msg.model, msg.stop_reason, headers=dict(raw.headers))

    def sync_stream() -> Got:
        with sync.messages.stream(**args) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        return Got(text, final.model, final.stop_reason, headers=dict(s.response.headers))

    try:
        if mode.startswith("async"):
            return await asyncio.wait_for({"async_create": async_create, "async_stream": async_stream}[mode](), 20)
        fn = {"sync_create": sync_create, "sync_stream": sync_stream}[mode]
        return await asyncio.wait_for(asyncio.to_thread(fn), 20)
    except anthropic.APIStatusError as exc:
        return Got(error=exc)


async def healthy_traffic(client: Any, sdk: anthropic.AsyncAnthropic) -> None:
    """Another model over /v1/messages and a /v1/query: neither may see any degradation."""
    raw = await sdk.messages.with_raw_response.create(model=HEALTHY, max_tokens=64, messages=PROMPT)
    assert raw.headers["x-rag-degraded"] == "false" and (await raw.parse()).model == HEALTHY
    resp = await client.post("/v1/query", json={"query": "How are breakers configured?"})
    body = await resp.json()
    assert resp.status == 200 and body["mode"] == "full" and body["degraded"] is False, body


def breakers(client: Any) -> dict[str, str]:
    return {g.name: g.breaker.state for g in state_of(client).llm_router.guards}


# fault → {mode kind → expectation}. Expectations: ("answer", model, mode header) | ("error", status).
# Attempts: stand-in requests per model for one call.
@dataclass
class Case:
    faults: dict[str, Any]
    create: tuple[Any, ...]
    stream: tuple[Any, ...]
    attempts_create: dict[str, int]
    attempts_stream: dict[str, int]
    faulty_model: str = FAULTY
    messages: list[dict[str, Any]] = field(default_factory=lambda: PROMPT)


FALLBACK_ANSWER = ("answer", FALLBACK, "fallback_model")
OWN_ANSWER = ("answer", FAULTY, "full")
OVERLOADED_THEN_FALLBACK = {FAULTY: 2, FALLBACK: 1}  # one retry on the faulty model, then its fallback
CASES = {
    "429_retry_after": Case({"status": 429, "retry_after_s": 0.2}, FALLBACK_ANSWER, FALLBACK_ANSWER,
                            OVERLOADED_THEN_FALLBACK, OVERLOADED_THEN_FALLBACK),
    "429_no_retry_after": Case({"status": 429}, FALLBACK_ANSWER, FALLBACK_ANSWER,
                               OVERLOADED_THEN_FALLBACK, OVERLOADED_THEN_FALLBACK),
    "500_once": Case({"status": 500, "times": 1}, OWN_ANSWER, OWN_ANSWER, {FAULTY: 2}, {FAULTY: 2}),
    "529_persistent": Case({"status": 529}, FALLBACK_ANSWER, FALLBACK_ANSWER,
                           OVERLOADED_THEN_FALLBACK, OVERLOADED_THEN_FALLBACK),
    "reset_before_headers": Case({"reset": True}, FALLBACK_ANSWER, FALLBACK_ANSWER,
                                 OVERLOADED_THEN_FALLBACK, OVERLOADED_THEN_FALLBACK),
    # No answer at all: a stream fails over at the 1 s first-token limit; a JSON answer has only the
    # request deadline (3 s here), which the hang uses up: a clean 529, never a hang.
    "no_response": Case({"hang": True}, ("error", 529), FALLBACK_ANSWER, {FAULTY: 1}, {FAULTY: 1, FALLBACK: 1}),
    "slow_first_token": Case({"first_token_delay_s": 2.0}, OWN_ANSWER, FALLBACK_ANSWER,
                             {FAULTY: 1}, {FAULTY: 1, FALLBACK: 1}),
    "cut_before_content": Case({"stream_cut_after": 2}, OWN_ANSWER, FALLBACK_ANSWER,
                               {FAULTY: 1}, OVERLOADED_THEN_FALLBACK),
    "cut_after_content": Case({"stream_cut_after": 5, "event_interval_s": 0.1}, OWN_ANSWER,
                              ("error", 200), {FAULTY: 1}, {FAULTY: 1}),
    "stall_before_content": Case({"stream_stall_after": 2}, OWN_ANSWER, FALLBACK_ANSWER,
                                 {FAULTY: 1}, {FAULTY: 1, FALLBACK: 1}),
    "stall_after_content": Case({"stream_stall_after": 5, "event_interval_s": 0.1}, OWN_ANSWER,
                                ("error", 200), {FAULTY: 1}, {FAULTY: 1}),
    "malformed_first_event": Case({"malformed": True}, FALLBACK_ANSWER, FALLBACK_ANSWER,
                                  OVERLOADED_THEN_FALLBACK, OVERLOADED_THEN_FALLBACK),
    "malformed_after_content": Case({"malformed_after": 5, "event_interval_s": 0.1}, OWN_ANSWER,
                                    ("error", 200), {FAULTY: 1}, {FAULTY: 1}),
    "no_message_stop": Case({"no_stop": True, "event_interval_s": 0.1}, OWN_ANSWER, ("error", 200), {FAULTY: 1}, {FAULTY: 1}),
    "400_context_too_long": Case(
        {"status": 400, "error_message": "prompt is too long: 250000 tokens > 200000 maximum"},
        ("answer", HEALTHY, "fallback_model"), ("answer", HEALTHY, "fallback_model"),
        {FAULTY: 1, HEALTHY: 1}, {FAULTY: 1, HEALTHY: 1}),
    "400_content_filter": Case({"status": 400, "error_message": "Output blocked by content filtering policy"},
                               ("error", 400), ("error", 400), {FAULTY: 1}, {FAULTY: 1}),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_fault_per_model(stack, name):
    await check_fault(stack, name, MODES)


# The faults whose handling depends on the HTTP client: connection reset, cut, stall, error answers.
@pytest.mark.parametrize("name", ["reset_before_headers", "cut_before_content", "cut_after_content",
                                  "stall_after_content", "429_retry_after", "400_content_filter"])
async def test_fault_per_model_over_the_aiohttp_transport(aiohttp_stack, name):
    await check_fault(aiohttp_stack, name, ("async_create", "async_stream"))


async def check_fault(stack, name, modes):
    client, sdk, sync, fake = stack
    case = CASES[name]
    for mode in modes:
        for g in state_of(client).llm_router.guards:
            g.breaker.reset()  # each mode starts from closed breakers: attempts are then exact
        fake.clear_faults()
        fake.set_model_faults(case.faulty_model, **case.faults)
        fake.model_counts.clear()
        got, _ = await asyncio.gather(call(sdk, sync, mode, FAULTY, case.messages), healthy_traffic(client, sdk))
        fake.model_counts[HEALTHY] -= 2  # the interleaved healthy requests (messages + query)
        stream = mode.endswith("stream")
        expect = case.stream if stream else case.create
        where = f"{name}/{mode}"
        if expect[0] == "answer":
            assert got.error is None, f"{where}: {got.error!r}"
            assert got.text == ANSWER and got.stop_reason == "end_turn", where  # complete, never truncated
            assert got.model == expect[1] and got.headers["x-rag-mode"] == expect[2], where
            assert got.headers["x-rag-degraded"] == ("true" if expect[2] != "full" or expect[1] != FAULTY
                                                     else "false") or name == "500_once", where
        else:
            assert got.error is not None and got.text is None, f"{where}: got {got!r}"
            assert got.error.status_code == expect[1], where
        want = case.attempts_stream if stream else case.attempts_create
        seen = {m: n for m, n in fake.model_counts.items() if n}
        assert seen == want, f"{where}: attempts {seen} != {want}"
        others = {n: s for n, s in breakers(client).items() if n != f"llm:{case.faulty_model}"}
        assert set(others.values()) <= {"closed"}, f"{where}: {others}"


async def test_content_filter_is_relayed_verbatim(stack):
    client, _, _, fake = stack
    fake.set_model_faults(FAULTY, status=400, error_message="Output blocked by content filtering policy")
    resp = await client.post("/v1/messages", json={"model": FAULTY, "max_tokens": 8, "messages": PROMPT})
    body = await resp.json()
    assert resp.status == 400 and body["error"] == {"type": "invalid_request_error",
                                                    "message": "Output blocked by content filtering policy"}
    assert resp.headers["request-id"] == body["request_id"]  # the upstream's own request id
    assert fake.model_counts.get(FALLBACK, 0) == 0
    assert state_of(client).llm_router.guard_for(fake.url, FAULTY).stats["failed"] == 1
    assert state_of(client).llm_router.guard_for(fake.url, FAULTY).breaker.snapshot()["state"] == "closed"


async def test_prefill_is_dropped_when_the_fallback_refuses_it(stack):
    client, sdk, _, fake = stack
    fake.set_model_faults(FAULTY, status=529)
    fake.set_model_faults(FALLBACK, reject_prefill=True)
    prefill = [*PROMPT, {"role": "assistant", "content": "Answer:"}]
    raw = await sdk.messages.with_raw_response.create(model=FAULTY, max_tokens=64, messages=prefill)
    msg = await raw.parse()
    assert msg.model == FALLBACK and msg.content[0].text == ANSWER
    reasons = [(d["model"], d["reason"]) for d in __import__("json").loads(raw.headers["x-rag-degradations"])]
    assert reasons == [(FAULTY, "overloaded"), (FALLBACK, "prefill_dropped")]
    assert fake.model_counts[FALLBACK] == 2 and fake.requests[-1].body["messages"] == PROMPT


async def test_flapping_model_always_answers_and_recovers(stack):
    client, sdk, _, fake = stack
    fake.set_model_faults(FAULTY, status=529, error_rate=0.5, times=6)  # flaps for 6 requests, then recovers
    served = set()
    for _ in range(8):
        got = await call(sdk, None, "async_stream", FAULTY)  # type: ignore[arg-type]
        assert got.error is None and got.text == ANSWER and got.model in (FAULTY, FALLBACK)
        served.add(got.model)
    assert fake.faults_of(FAULTY).times == 0 and served == {FAULTY, FALLBACK}
    guard = state_of(client).llm_router.guard_for(fake.url, FAULTY)
    if guard.breaker.state != "closed":  # the flapping may have opened it: skip its open interval
        guard.breaker.reset()
    got = await call(sdk, None, "async_create", FAULTY)  # type: ignore[arg-type]
    assert got.model == FAULTY and got.headers["x-rag-mode"] == "full"  # recovered (the flapping is over)
    assert breakers(client)[f"llm:{FALLBACK}"] == "closed"


async def test_a_fallback_model_requested_directly_gets_a_capped_retry_after(stack):
    client, sdk, _, fake = stack
    fake.set_model_faults(FALLBACK, status=529, retry_after_s=30)
    resp = await client.post("/v1/messages", json={"model": FALLBACK, "max_tokens": 8, "messages": PROMPT})
    assert resp.status == 529 and (await resp.json())["error"]["type"] == "overloaded_error"
    assert resp.headers["retry-after"] == "5" and "retry-after-ms" not in resp.headers
    assert resp.headers["x-rag-mode"] == "unavailable"


async def test_one_models_open_breaker_never_touches_another_model_or_query(stack):
    """Isolation: FAULTY's breaker opens; HEALTHY (messages and /v1/query) and the fallback stay untouched.
    (With one shared LLM guard — the old design — the healthy traffic below is short-circuited.)"""
    client, sdk, _, fake = stack
    fake.set_model_faults(FAULTY, status=529)
    for _ in range(3):  # two attempts each: 6 consecutive failures ≥ failure_threshold (5)
        got = await call(sdk, None, "async_create", FAULTY)  # type: ignore[arg-type]
        assert got.model == FALLBACK and got.text == ANSWER
    assert state_of(client).llm_router.target(FAULTY).guard.breaker.state == "open"
    tried = fake.model_counts[FAULTY]
    got = await call(sdk, None, "async_stream", FAULTY)  # type: ignore[arg-type]
    assert got.model == FALLBACK and fake.model_counts[FAULTY] == tried  # short-circuited, not retried
    assert '"reason": "breaker_open"' in got.headers["x-rag-degradations"]
    await healthy_traffic(client, sdk)
    assert {n: s for n, s in breakers(client).items() if n != f"llm:{FAULTY}"} == {
        f"llm:{HEALTHY}": "closed", f"llm:{FALLBACK}": "closed"}
    health = await (await client.get("/health")).json()
    assert health["degraded_components"] == [f"llm:{FAULTY}:open"]
    assert health["components"]["llm"]["models"][f"llm:{HEALTHY}"]["state"] == "closed"
