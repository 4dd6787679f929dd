"""/v1/messages: the real anthropic SDK pointed at the sidecar (ANTHROPIC_BASE_URL), the sidecar
pointed at the fake Anthropic. Failover to the fallback model is labelled in headers."""
from __future__ import annotations

import asyncio
import time

import anthropic
import pytest
from multidict import CIMultiDict

from gateway.errors import APIError
from gateway.http_input import validate
from gateway.routes.messages import MessagesRequest, requested_model
from tests.conftest import anthropic_overrides, make_settings, state_of


@pytest.fixture
async def proxy(gateway_factory, data_dir, fake_anthropic):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"resilience.llm.retry.max_attempts": 1})))
    sdk = anthropic.AsyncAnthropic(api_key="sk-ant-client-key-000000", base_url=str(client.make_url("")).rstrip("/"),
                                   max_retries=0)
    yield client, sdk, fake_anthropic
    await sdk.close()


async def test_sdk_through_the_sidecar(proxy):
    _, sdk, fake = proxy
    raw = await sdk.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=64,
        messages=[{"role": "user", "content": "[1] Tea is brewed at 70 degrees. Question: how hot?"}])
    msg = await raw.parse()
    assert msg.content[0].text.startswith("Tea is brewed at 70 degrees")
    assert raw.headers["x-rag-mode"] == "full" and raw.headers["x-rag-degraded"] == "false"
    sent = fake.requests[-1]
    assert sent.model == "claude-sonnet-4-6"
    # The configured key is used upstream, never the client's.
    assert sent.headers.get("x-api-key") == "sk-ant-test-key-0123456789"


async def test_streaming_passes_through(proxy):
    _, sdk, _ = proxy
    async with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                   messages=[{"role": "user", "content": "[1] Lava is hot. Why?"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.startswith("Lava is hot") and final.stop_reason == "end_turn"


async def test_overloaded_primary_fails_over_to_the_fallback_model(proxy):
    _, sdk, fake = proxy
    fake.set_faults(status=529, models=["claude-sonnet-4-6"])
    raw = await sdk.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hello"}])
    assert (await raw.parse()).model == "claude-haiku-4-5"
    assert raw.headers["x-rag-degraded"] == "true" and raw.headers["x-rag-mode"] == "fallback_model"
    assert '"reason": "overloaded"' in raw.headers["x-rag-degradations"]


async def test_everything_down_relays_the_last_upstream_error_verbatim(proxy):
    _, sdk, fake = proxy
    fake.set_faults(status=500)
    with pytest.raises(anthropic.APIStatusError) as err:
        await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                  messages=[{"role": "user", "content": "hello"}])
    assert err.value.status_code == 500 and err.value.body["error"]["type"] == "api_error"
    headers = err.value.response.headers
    assert headers["x-rag-mode"] == "unavailable" and headers["request-id"] == err.value.body["request_id"]
    assert 1 <= int(headers["retry-after"]) <= 5


async def test_nothing_answered_is_an_anthropic_529_the_sdk_understands(proxy):
    client, _, fake = proxy
    for g in state_of(client).llm_router.guards:
        g.breaker.force_open()
    resp = await client.post("/v1/messages", json={"model": "claude-sonnet-4-6", "max_tokens": 8,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 529 and (await resp.json())["error"]["type"] == "overloaded_error"
    assert 1 <= int(resp.headers["retry-after"]) <= 5 and fake.requests_total == 0


async def test_client_errors_are_relayed_not_degraded(proxy):
    client, _, fake = proxy
    resp = await client.post("/v1/messages", json={"model": "claude-sonnet-4-6", "messages": []})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert fake.model_counts.get("claude-haiku-4-5", 0) == 0


async def test_missing_model_is_a_422_naming_the_field(proxy):
    client, _, _ = proxy
    resp = await client.post("/v1/messages", json={"max_tokens": 5, "messages": []})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "model"


async def test_forwarded_headers_go_once_each_whatever_their_case(proxy):
    # A client's "Anthropic-Version" is the version sent, not one line beside the default; repeated
    # anthropic-beta lines go as one comma list; other client headers stay behind.
    client, _, fake = proxy
    headers = CIMultiDict([("Content-Type", "application/json"), ("Anthropic-Version", "2023-01-01"),
                           ("anthropic-beta", "tools-1"), ("anthropic-beta", "cache-2"), ("X-Other", "z")])
    resp = await client.post("/v1/messages", headers=headers, data=b'{"model": "claude-sonnet-4-6", '
                             b'"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}')
    assert resp.status == 200
    sent = fake.requests[-1].headers
    assert sent["anthropic-version"] == "2023-01-01" and sent["anthropic-beta"] == "tools-1, cache-2"
    assert sent["content-type"] == "application/json" and "x-other" not in sent


class _Str(str):
    pass


@pytest.mark.parametrize("body", [
    {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}, {"model": "x"}, {"model": "é"}, {"model": "\ud800"},
    {"model": " "}, {"model": "m", "__dict__": 1, "model_config": 2, "_private": 3, "model_validate": 4},
    {}, {"max_tokens": 5}, {"model": ""}, {"model": None}, {"model": 5}, {"model": 1.5}, {"model": True},
    {"model": ["claude"]}, {"model": {"name": "claude"}}, {"model": b"claude"}, {"model": _Str("claude")},
    [], ["model"], "claude", 5, None])
def test_the_model_check_accepts_and_refuses_what_the_schema_does(body):
    # requested_model skips pydantic for the bodies it surely accepts: it must agree with MessagesRequest on
    # every body, returning the same model or raising the same 422 (type, message, field).
    def outcome(check):
        try:
            return "ok", check(body)
        except APIError as exc:
            return exc.status, exc.text
    assert outcome(requested_model) == outcome(lambda b: validate(MessagesRequest, b).model)


async def test_the_request_deadline_bounds_the_first_token_not_a_healthy_stream(proxy):
    client, _, fake = proxy
    fake.set_faults(event_interval_s=0.3)  # ~1.5 s of answer, well past the 1 s deadline
    resp = await client.post("/v1/messages", headers={"X-Request-Timeout": "1"}, json={
        "model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "[1] Lava is hot because the mantle melts rock deep down. Why?"}]})
    assert resp.status == 200
    body = await asyncio.wait_for(resp.read(), timeout=10)
    assert body.rstrip().endswith(b'data: {"type": "message_stop"}') and b"event: error" not in body


async def test_a_slow_json_answer_is_bounded_by_the_deadline(proxy):
    client, _, fake = proxy
    fake.set_faults(latency_s=5)
    t0 = time.monotonic()
    resp = await client.post("/v1/messages", headers={"X-Request-Timeout": "1"}, json={
        "model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 529 and (await resp.json())["error"]["type"] == "overloaded_error"
    assert time.monotonic() - t0 < 2.5


async def test_a_clients_bad_key_is_relayed_and_trips_nothing(gateway_factory, data_dir):
    from chaos.stubs.anthropic import FakeAnthropic

    fake = FakeAnthropic(api_key="sk-ant-the-real-one-000")
    await fake.start()
    try:
        # Pure sidecar: no key configured, the client's own key goes upstream.
        client = await gateway_factory(make_settings(data_dir, **{
            "llm.backend": "anthropic", "llm.base_url": fake.url, "llm.fallback_model": "claude-haiku-4-5"}))
        for _ in range(6):
            resp = await client.post("/v1/messages", headers={"x-api-key": "sk-ant-revoked-key-000"}, json={
                "model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
        assert {g.breaker.state for g in state_of(client).llm_router.guards} == {"closed"}
        assert fake.model_counts.get("claude-haiku-4-5", 0) == 0
        ok = await client.post("/v1/messages", headers={"x-api-key": "sk-ant-the-real-one-000"}, json={
            "model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status == 200
    finally:
        await fake.stop()


def test_repeated_header_lines_go_upstream_as_one_value_each(data_dir):
    """Raw duplicate lines (what an HTTP client library would merge before sending): list headers join, a
    single-value header keeps one value (a joined "2023-06-01, 2023-06-01" is no version)."""
    from aiohttp.test_utils import make_mocked_request

    from gateway.app import create_app
    from gateway.routes.messages import GATEWAY
    from gateway.state import REQUEST_ID

    app = create_app(make_settings(data_dir), configure_logging=False)
    gw = app[GATEWAY]
    request = make_mocked_request("POST", "/v1/messages", app=app, headers=CIMultiDict([
        ("Content-Type", "application/json"), ("content-type", "application/json"),
        ("Anthropic-Version", "2023-06-01"), ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "tools-1"), ("Anthropic-Beta", "cache-2")]))
    request[REQUEST_ID] = "r1"
    headers, _ = gw.upstream_headers(request, gw.router.target("claude-sonnet-4-6"))
    assert headers["anthropic-version"] == "2023-06-01" and headers["content-type"] == "application/json"
    assert headers["anthropic-beta"] == "tools-1, cache-2"
