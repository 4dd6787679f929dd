"""/v1/messages streams under default limits: a long healthy Claude answer, and hundreds at once.

Defaults only (the stand-in paces its events): the old limits cut a 20 s answer at the 8 s stage
timeout / 10 s deadline and shed 21 of 50 concurrent streams.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import pytest

from resilience.watchdog import watchdog
from tests.conftest import anthropic_overrides, make_settings, state_of

MODEL = "claude-sonnet-4-6"


async def test_a_30_s_healthy_stream_completes_under_defaults(gateway_factory, data_dir, fake_anthropic):
    # 10 s to the first token (past the old 8 s stage timeout), then 20 deltas a second apart.
    words = " ".join(f"w{i}" for i in range(40))
    fake_anthropic.reply = words
    fake_anthropic.set_model_faults(MODEL, first_token_delay_s=10.0, event_interval_s=1.0)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    sdk = anthropic.AsyncAnthropic(api_key="sk-ant-client-0000", base_url=str(client.make_url("")).rstrip("/"),
                                   max_retries=0)
    t0 = time.monotonic()
    try:
        async with sdk.messages.stream(model=MODEL, max_tokens=512,
                                       messages=[{"role": "user", "content": "talk for a while"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    finally:
        await sdk.close()
    assert time.monotonic() - t0 >= 29.0
    assert text == words and final.stop_reason == "end_turn" and final.model == MODEL
    assert fake_anthropic.model_counts[MODEL] == 1
    assert stream.response.headers["x-rag-mode"] == "full"


async def _stream(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.post(url, json={"model": MODEL, "max_tokens": 64, "stream": True,
                                    "messages": [{"role": "user", "content": "[1] Lava is hot. Why?"}]}) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("n", [50, 500])
async def test_hundreds_of_concurrent_streams_all_complete_under_defaults(gateway_factory, data_dir,
                                                                          fake_anthropic, n):
    fake_anthropic.reply = " ".join(f"w{i}" for i in range(10))  # 5 deltas, 0.3 s apart: ~1.5 s open each
    fake_anthropic.set_model_faults(MODEL, event_interval_s=0.3)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    state = state_of(client)
    url = str(client.make_url("/v1/messages"))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, state.llm_router.target(MODEL).guard.bulkhead.in_flight, _open_streams(client))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.wait_for(asyncio.gather(*(_stream(http, url) for _ in range(n))), 120)
    watcher.cancel()
    assert [s for s, _ in results] == [200] * n  # none shed
    for _, body in results:  # none truncated, none ended with an error event
        assert body.rstrip().endswith(b'data: {"type": "message_stop"}') and b"event: error" not in body
    assert fake_anthropic.model_counts[MODEL] == n  # one attempt each: nothing retried or failed over
    assert peak >= min(n, 50)  # they really were open at the same time
    assert _open_streams(client) == 0


def _open_streams(client) -> int:
    from gateway.routes.messages import GATEWAY

    return client.server.app[GATEWAY].streams.in_flight


async def test_the_idle_limit_bounds_each_gap_not_the_stream(gateway_factory, data_dir, fake_anthropic):
    """llm.idle_timeout_s 0.5 s: a stream 3x longer than that, with a delta every 0.1 s, completes (its one
    idle timer re-arms instead of firing); a stall after content is cut after the gap, ended with an
    Anthropic timeout_error event."""
    fake_anthropic.reply = " ".join(f"w{i}" for i in range(30))  # 15 deltas, 0.1 s apart: ~1.5 s
    fake_anthropic.set_model_faults(MODEL, event_interval_s=0.1)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"llm.idle_timeout_s": 0.5})))
    url = str(client.make_url("/v1/messages"))
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        status, body = await _stream(http, url)
        assert time.monotonic() - t0 >= 1.4 and status == 200
        assert body.rstrip().endswith(b'data: {"type": "message_stop"}') and b"event: error" not in body
        fake_anthropic.set_model_faults(MODEL, event_interval_s=0.1, stream_stall_after=5)
        t0 = time.monotonic()
        status, body = await asyncio.wait_for(_stream(http, url), 20)
    assert status == 200 and b"content_block_delta" in body and body.count(b"event: error") == 1
    assert b'"type": "timeout_error"' in body and b"message_stop" not in body
    assert 0.5 <= time.monotonic() - t0 < 10
    await _no_limit_left_armed()


async def _no_limit_left_armed() -> None:
    """Every per-stream limit (header wait, idle gap, client, stream length) is disarmed once the relay ends;
    the relay's finally runs just after the client read the last bytes, so give it a few loop turns."""
    dog = watchdog()
    for _ in range(200):
        if not dog.live:
            break
        await asyncio.sleep(0.01)
    assert not dog.live


async def test_response_headers_that_never_come_are_bounded_by_the_idle_limit(gateway_factory, data_dir,
                                                                              fake_anthropic):
    """llm.idle_timeout_s 0.3 s also bounds the wait for a stream's response headers: a model that accepts
    the request and says nothing fails over after ~0.3 s, not at the 10 s request deadline."""
    fake_anthropic.set_model_faults(MODEL, hang=True)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"llm.idle_timeout_s": 0.3})))
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        async with http.post(str(client.make_url("/v1/messages")), json={
                "model": MODEL, "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": "[1] Lava is hot. Why?"}]},
                timeout=aiohttp.ClientTimeout(total=10)) as r:  # without the limit: 120 s (first_token_timeout_s)
            body = await r.read()
            elapsed = time.monotonic() - t0
            assert r.status == 200 and r.headers["x-rag-mode"] == "fallback_model", (r.status, body[:300])
    assert b"message_stop" in body and b'"model": "claude-haiku-4-5"' in body.replace(b'":"', b'": "')
    assert 0.3 <= elapsed < 3
    await _no_limit_left_armed()


async def test_open_streams_leave_connections_for_everything_else(gateway_factory, data_dir, fake_anthropic):
    """server.max_connections 20, llm.max_streams 100: 18 stream slots. With 18 streams open, the next stream
    gets an Anthropic 529 with Retry-After (not a reset at connect), and a probe and a JSON request on new
    connections are served."""
    fake_anthropic.reply = " ".join(f"w{i}" for i in range(10))  # 5 deltas, 0.5 s apart: ~2.5 s open each
    fake_anthropic.set_model_faults(MODEL, event_interval_s=0.5)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"server.max_connections": 20, "llm.max_streams": 100})))
    url = str(client.make_url("/v1/messages"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        held = [asyncio.create_task(_stream(http, url)) for _ in range(18)]
        for _ in range(200):  # bounded: until all 18 hold their slot
            if _open_streams(client) == 18:
                break
            await asyncio.sleep(0.02)
        assert _open_streams(client) == 18
        async with http.post(url, json={"model": MODEL, "max_tokens": 64, "stream": True,
                                        "messages": [{"role": "user", "content": "one more"}]}) as shed:
            assert shed.status == 529 and shed.headers["Retry-After"] == "1"
            assert (await shed.json())["error"]["type"] == "overloaded_error"
        async with http.get(client.make_url("/readyz")) as probe:
            assert probe.status == 200
        async with http.post(url, json={"model": MODEL, "max_tokens": 64, "stream": False,
                                        "messages": [{"role": "user", "content": "not a stream"}]}) as plain:
            assert plain.status == 200 and (await plain.json())["type"] == "message"
        assert _open_streams(client) == 18, "the checks ran while every slot was held"
        results = await asyncio.wait_for(asyncio.gather(*held), 60)
    assert [s for s, _ in results] == [200] * 18
    assert all(body.rstrip().endswith(b'data: {"type": "message_stop"}') for _, body in results)
