"""The ``truncated_streams`` probe can fail: the drill's own load and probe, over real sockets, against the
Anthropic stand-in *directly* (the gateway's stream guard bypassed) and then through the gateway.

A stream that ends cleanly without ``message_stop`` (stand-in fault ``no_stop``) is what an SDK may take
for a whole answer: straight from the stand-in the probe must count every one of them and fail; healthy
streams must pass it; through the gateway the same fault must reach the client as an Anthropic
``event: error`` (issue 10: "a stream that ends without message_stop is an error") and pass it.
"""
from __future__ import annotations

import time
from typing import Any

import aiohttp

from chaos.load import LoadGenerator, RequestRecord
from chaos.probes import ProbeInput, Verdict, truncated_streams
from chaos.scenario import Probe, load_scenario
from tests.conftest import anthropic_overrides, make_settings

PRIMARY = "claude-sonnet-4-6"
SCENARIO = load_scenario("messages_stream_cut", {"primary_model": PRIMARY})  # /v1/messages, every request streamed
[PROBE] = [p for p in SCENARIO.steady_state_hypothesis.probes if p.type == "truncated_streams"]


async def _drill_load(url: str, headers: dict[str, str] | None = None) -> list[RequestRecord]:
    """Six streamed /v1/messages requests from the drill's own load generator (8/s for 0.7 s)."""
    async with aiohttp.ClientSession(headers=headers) as session:
        load = LoadGenerator(session, url, SCENARIO, ["How long should green tea steep?"], time.monotonic)
        await load.run(max_s=0.7)
        await load.drain()
    assert len(load.records) == 6 and all(r.stream for r in load.records)
    return load.records


def _judge(probe: Probe, records: list[RequestRecord]) -> Verdict:
    done = [r for r in records if r.latency_ms is not None]
    answers = [r for r in done if r.status == 200 and r.error is None]
    drill: Any = None  # truncated_streams reads only the records
    return truncated_streams(ProbeInput(probe, "during", "llm", [], records, done, answers, records, drill))


async def test_the_probe_fails_on_streams_that_stop_without_message_stop(fake_anthropic) -> None:
    key = {"x-api-key": "sk-ant-test-key-0123456789"}
    healthy = _judge(PROBE, await _drill_load(fake_anthropic.url, key))
    assert healthy.met and healthy.value == 0 and healthy.detail["streams"] == 6

    fake_anthropic.set_faults(no_stop=True)
    truncated = _judge(PROBE, await _drill_load(fake_anthropic.url, key))
    assert not truncated.met
    assert truncated.value == 6 and truncated.detail["error_events"] == 0


async def test_through_the_gateway_the_same_fault_is_an_honest_error_event(gateway_factory, data_dir,
                                                                           fake_anthropic) -> None:
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    fake_anthropic.set_faults(no_stop=True)
    records = await _drill_load(str(client.make_url("")))
    verdict = _judge(PROBE, records)
    assert verdict.met and verdict.value == 0
    assert verdict.detail["error_events"] == 6, [(r.status, r.error) for r in records]
