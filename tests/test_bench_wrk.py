"""The bench's compiled load generator (bench/wrk.py) and canned Anthropic upstream (bench/canned.py).

The parser is checked on a captured wrk 4.1.0 output (no wrk needed); the canned upstream is checked with
the real anthropic SDK over a real socket (its SSE must pass message_start … message_stop); one short wrk
run against it when wrk is installed (``make bench-tools``).
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import anthropic
import pytest

from bench.canned import MODEL, serve
from bench.loadgen import LoadSpec
from bench.wrk import lua_str, parse_script, parse_text, run_wrk, to_result, uncorrect, wrk_path

# A real wrk 4.1.0 run with bench/wrk.py's script (2 connections, 0.3 s, POSTs to a path the canned upstream
# answers with 404); the histogram cut to a few lines and the summary line adjusted to match them.
SAMPLE = """\
Running 2s test @ http://127.0.0.1:42145/v1/query
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.80ms    4.18ms  28.05ms   92.02%
    Req/Sec    10.21k     4.13k   14.89k    66.67%
  Latency Distribution
     50%   61.00us
     75%    1.58ms
     90%    4.72ms
     99%   23.12ms
  3106 requests in 307.41ms, 567.21KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3106
Requests/sec:  10103.77
Transfer/sec:      1.80MB
benchgen-summary 10 307410 0 2 0 4 1
benchgen-lat 28 4
benchgen-lat 61 3
benchgen-lat 1580 2
benchgen-lat 23120 1
benchgen-status 404 4
benchgen-status 200 6
benchgen-mode full 5
benchgen-mode keyword_fallback 1
benchgen-degraded 1
"""


def test_wrk_text_report_is_parsed() -> None:
    res = parse_text(SAMPLE)
    assert res["requests"] == 3106 and res["duration_ms"] == pytest.approx(307.41)
    assert res["rps"] == pytest.approx(10103.77)
    assert res["percentiles_ms"] == {"50": pytest.approx(0.061), "75": 1.58, "90": 4.72, "99": 23.12}
    assert res["non_2xx_3xx"] == 3106
    assert res["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 1}


def test_script_lines_become_the_load_generators_result_shape() -> None:
    spec = LoadSpec(url="http://127.0.0.1:1/v1/query", bodies=[{"query": "q"}], concurrency=2, duration_s=0.3,
                    return_raw=True)
    res = to_result(spec, parse_script(SAMPLE), warmup_requests=7, cpu_s=0.01)
    assert res["requests"] == 10 and res["warmup_requests"] == 7 and res["window_s"] == pytest.approx(0.307)
    assert res["rps"] == pytest.approx(10 / 0.30741, abs=0.1)
    assert res["status"] == {"200": 6, "404": 4}
    assert res["modes"] == {"full": 5, "keyword_fallback": 1} and res["degraded"] == 1
    assert res["errors"] == {"wrk_read": 2, "wrk_timeout": 1}  # non-2xx are in status, not errors
    assert sorted(res["raw_ms"]) == [0.028] * 4 + [0.061] * 3 + [1.58] * 2 + [23.12]
    assert res["p50_ms"] == pytest.approx(0.061) and res["max_ms"] == pytest.approx(23.12)
    assert res["loadgen"] == "wrk" and res["loadgen_cpu_s"] == 0.01


def _wrk_stats_correct(hist: dict[int, int], expected: int) -> dict[int, int]:
    """wrk 4.1's stats_correct (src/stats.c), on a {µs: count} histogram."""
    data = dict(hist)
    for n in range(expected * 2, max(data) + 1):
        count, m = hist.get(n, 0), n - expected  # data[n] is still its original value when n is reached
        while count and m > expected:
            data[m] = data.get(m, 0) + count
            m -= expected
    return data


def test_coordinated_omission_samples_wrk_added_are_taken_out() -> None:
    measured = {100: 50, 180: 7, 250: 3, 900: 2, 1234: 1}  # 63 answers
    duration_us, connections = 3150, 4  # interval = 3150 // (63 // 4) = 210 µs
    corrected = _wrk_stats_correct(measured, 210)
    assert sum(corrected.values()) > 63  # wrk's done() sees the padded histogram
    assert uncorrect(sorted(corrected.items()), duration_us, 63, connections) == sorted(measured.items())
    short = [(100, 5)]  # nothing above 2 × interval: unchanged
    assert uncorrect(short, duration_us, 5, 1) == short


def test_output_without_the_scripts_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="benchgen-summary"):
        parse_script(SAMPLE.split("benchgen-summary")[0])


def test_lua_strings_escape_quotes_backslashes_and_non_ascii() -> None:
    assert lua_str('a"b\\c\né') == '"a\\034b\\092c\\010\\195\\169"'


@pytest.fixture(scope="module")
def canned_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["server"], box["url"] = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30)
    yield box["url"]

    async def close() -> None:
        box["server"].close()
        await box["server"].wait_closed()

    asyncio.run_coroutine_threadsafe(close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


@pytest.mark.timeout(60)
def test_canned_upstream_speaks_anthropic_json_and_sse_to_the_sdk(canned_url: str) -> None:
    client = anthropic.Anthropic(base_url=canned_url, api_key="sk-ant-bench", max_retries=0)
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and "csv.DictReader" in msg.content[0].text
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == msg.content[0].text and final.stop_reason == "end_turn"  # message_start … message_stop
    with pytest.raises(anthropic.NotFoundError):
        client.models.list()  # only POST /v1/messages is canned


@pytest.mark.timeout(60)
@pytest.mark.skipif(wrk_path() is None, reason="wrk not installed (make bench-tools)")
def test_wrk_drives_json_and_sse_with_unique_bodies(canned_url: str) -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        spec = LoadSpec(url=canned_url + "/v1/messages", bodies=[{**body, "stream": stream}], concurrency=4,
                        duration_s=0.3, warmup_s=0.1, headers={"x-api-key": "k"}, return_raw=True)
        res = run_wrk(spec, wrk_path() or "wrk")
        assert res["requests"] > 10 and res["status"] == {"200": res["requests"]} and not res["errors"]
        assert len(res["raw_ms"]) == res["requests"] and res["warmup_requests"] > 0
        assert res["loadgen_cpu_s"] > 0 and res["window_s"] < 1.5  # stopped by SIGINT, not at wrk's whole second
    bad = run_wrk(LoadSpec(url=canned_url + "/v1/query", bodies=[{"query": "q"}], concurrency=2, duration_s=0.2,
                           warmup_s=0, unique_field="query"), wrk_path() or "wrk")
    assert set(bad["status"]) == {"404"} and bad["wrk"]["non_2xx_3xx"] == bad["requests"]
