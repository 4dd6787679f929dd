"""Logs as an SRE reads them: one JSON line per request carrying every decision, state-change events,
and never a secret; prompts and answers only when ``logging.log_prompts`` is on."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from typing import Any, Iterator

import pytest

from gateway.logs import QUIET_LOGGERS, TextFormatter, setup_logging
from tests.conftest import anthropic_overrides, make_settings, state_of

# Shaped like real keys; the client key deliberately does NOT look like "sk-…", so the test proves it
# is never logged at all rather than relying on redact()'s pattern.
CLIENT_KEY = "rsk_live_Q7vX2mN9pL4tY8wZ"
ANTHROPIC_KEY = "sk-ant-api03-Zq8Xw2Lm5Nv7Bc1Df4Gh6Jk9Pr3St0Uy"
MARKER = "zebra-marker-31337"
QUESTION = f"What temperature should water be for green tea? {MARKER}"


class Captured:
    def __init__(self) -> None:
        self.json_stream, self.text_stream = io.StringIO(), io.StringIO()

    @property
    def output(self) -> str:
        """Everything both formatters wrote."""
        return self.json_stream.getvalue() + self.text_stream.getvalue()

    def records(self, **match: Any) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.json_stream.getvalue().splitlines()]
        return [r for r in lines if match.items() <= r.items()]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """The gateway's own logging set-up (setup_logging, JSON, at DEBUG: the most verbose) writing to a
    buffer, plus a second root handler with the text formatter; global logging state restored after."""
    captured = Captured()
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *QUIET_LOGGERS)}
    setup_logging("DEBUG", "json", stream=captured.json_stream)
    text = logging.StreamHandler(captured.text_stream)
    text.setFormatter(TextFormatter())
    root.addHandler(text)
    yield captured
    for h in list(root.handlers):
        if h is text or getattr(h, "_rag_sidecar", False):
            root.removeHandler(h)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _settings(data_dir, fake_anthropic, **extra: Any):
    """Auth on, the Anthropic key from ANTHROPIC_API_KEY (as deployed), the LLM at the stand-in."""
    overrides = {k: v for k, v in anthropic_overrides(fake_anthropic).items() if k != "llm.api_key"}
    # A generous embedder timeout: the degradations asserted below must be the forced ones only.
    overrides.update({"auth.api_keys": [CLIENT_KEY], "resilience.embedder.timeout_s": 20.0, **extra})
    return make_settings(data_dir, env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, **overrides)


async def _degraded_queries(client, fake_anthropic) -> list[tuple[Any, dict[str, Any]]]:
    """Vector DB breaker held open and the LLM failing: keyword fallback + extractive answer."""
    state_of(client).guards["vector_db"].breaker.force_open()
    fake_anthropic.set_faults(status=500)
    out = []
    for headers in ({"Authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY}):
        resp = await client.post("/v1/query", json={"query": QUESTION}, headers=headers)
        out.append((resp, await resp.json()))
    return out


async def test_degraded_request_line_has_every_decision(gateway_factory, data_dir, fake_anthropic, logs):
    client = await gateway_factory(_settings(data_dir, fake_anthropic))
    (resp, body), _ = await _degraded_queries(client, fake_anthropic)
    assert resp.status == 200 and body["degraded"] is True and body["mode"] == "extractive"

    [line] = logs.records(event="request", request_id=resp.headers["X-Request-Id"])
    assert line["logger"] == "rag_sidecar.access" and line["level"] == "info"
    assert line["route"] == "/v1/query" and line["method"] == "POST" and line["status"] == 200
    assert line["mode"] == "extractive" and line["degraded"] is True and line["retriever"] == "bm25"
    assert line["degradations"] == body["degradations"]
    assert [(d["component"], d["reason"]) for d in line["degradations"]] == [
        ("vector_db", "breaker_open"), ("llm", "error"), ("llm_fallback", "error")]
    assert line["timings_ms"] == body["timings_ms"] and line["timings_ms"]["total"] > 0
    assert line["cache"] == "miss"
    # one retry each on the 500s (max_attempts 2), per model's guard
    assert line["retries"] == {"llm:claude-sonnet-4-6": 1, "llm:claude-haiku-4-5": 1}
    assert line["client"] == "key:…" + CLIENT_KEY[-4:]
    assert line["duration_ms"] >= line["timings_ms"]["total"]
    assert "query" not in line and "answer" not in line


async def test_secrets_never_reach_any_log_output(gateway_factory, data_dir, fake_anthropic, logs):
    client = await gateway_factory(_settings(data_dir, fake_anthropic))
    for resp, _ in await _degraded_queries(client, fake_anthropic):
        assert resp.status == 200
    # and a rejected key, an admin call without a token, a probe, a 404
    await client.post("/v1/query", json={"query": "tea"}, headers={"Authorization": f"Bearer {CLIENT_KEY}x"})
    await client.get("/health")
    await client.get("/nope", headers={"x-api-key": CLIENT_KEY})
    assert logs.records(event="request", status=401)
    assert len(logs.records(event="request")) >= 5 and logs.records(event="breaker_state_change")
    assert logs.output  # the handlers really captured something
    for secret in (CLIENT_KEY, ANTHROPIC_KEY, ANTHROPIC_KEY[len("sk-ant-"):]):
        assert secret not in logs.output


async def test_prompts_and_answers_are_not_logged_by_default(gateway_factory, data_dir, fake_anthropic, logs):
    client = await gateway_factory(_settings(data_dir, fake_anthropic))
    fake_anthropic_ok = await client.post("/v1/query", json={"query": QUESTION},
                                          headers={"x-api-key": CLIENT_KEY})
    answer = (await fake_anthropic_ok.json())["answer"]
    (resp, body), _ = await _degraded_queries(client, fake_anthropic)
    assert fake_anthropic_ok.status == 200 and answer
    for line in logs.records(event="request"):
        assert "query" not in line and "answer" not in line
    assert MARKER not in logs.output
    assert answer not in logs.output and body["answer"] not in logs.output


async def test_prompts_and_answers_are_logged_when_configured(gateway_factory, data_dir, fake_anthropic, logs):
    client = await gateway_factory(_settings(data_dir, fake_anthropic, **{"logging.log_prompts": True}))
    (resp, body), _ = await _degraded_queries(client, fake_anthropic)
    [line] = logs.records(event="request", request_id=resp.headers["X-Request-Id"])
    assert line["query"] == QUESTION and line["answer"] == body["answer"]
    assert CLIENT_KEY not in logs.output and ANTHROPIC_KEY not in logs.output


async def test_breaker_transitions_are_logged_as_events(gateway_factory, data_dir, logs):
    client = await gateway_factory(make_settings(data_dir))
    breaker = state_of(client).guards["embedder"].breaker
    breaker.force_open()
    breaker.close()
    events = logs.records(event="breaker_state_change", dependency="embedder")
    assert [(e["from"], e["to"], e["level"]) for e in events] == [("closed", "open", "warning"),
                                                                  ("open", "closed", "info")]
    assert events[0]["logger"] == "rag_sidecar.events"


@pytest.mark.parametrize("name", ["Authorization", "PROXY-AUTHORIZATION", "x-api-key", "Api-Key", "X-Admin-Token",
                                  "cookie", "Set-Cookie", "Authorızation"])  # the last with a dotless ı
def test_credential_headers_are_redacted_inside_a_whole_json_line(name):
    """The access line is redacted whole, with a cheap look for header names first: any case, deep in a
    long line, and non-ASCII text that the case-insensitive pattern still matches."""
    from gateway.logs import redact

    line = json.dumps({"event": "request", "route": "/v1/messages", "pad": "x" * 600,
                       "detail": f"b'POST / HTTP/1.1\\r\\n{name}: hunter2-plain\\r\\n'"},
                      ensure_ascii=False)
    out = redact(line)
    assert "hunter2-plain" not in out and f"{name}: [REDACTED]" in out
    assert json.loads(out)["pad"] == "x" * 600


def test_json_line_timestamp_is_the_records_utc_time_to_the_millisecond():
    from gateway.logs import JsonFormatter

    fmt = JsonFormatter()
    for created in (1_700_000_000.0005, 1_700_000_000.9994, 1_700_000_001.25):  # same second, then the next
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert json.loads(fmt.format(record))["timestamp"] == (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(record.msecs):03d}Z")


@contextlib.contextmanager
def only_the_gateway_handler(stream: io.StringIO) -> Iterator[logging.Handler]:
    """setup_logging's JSON handler as the root's only one (as in a deployed process), for the access
    log's fast path: inside the test body, since pytest attaches its capture handlers to each phase."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *QUIET_LOGGERS)}
    saved_handlers = list(root.handlers)
    setup_logging("INFO", "json", stream=stream)
    [handler] = [h for h in root.handlers if getattr(h, "_rag_sidecar", False)]
    root.handlers = [handler]
    try:
        yield handler
    finally:
        handler.flush()
        root.handlers = saved_handlers
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def test_access_line_written_straight_equals_the_logging_line(gateway_factory, data_dir):
    """The access log bypasses logging's record machinery when the gateway's handler is the only one:
    same fields, request id and redaction as through logging (a second handler forces that path)."""
    from gateway.logs import _sole_json_handler
    from gateway.middleware import log as access

    client = await gateway_factory(make_settings(data_dir))
    secret_path = "/nope/" + ANTHROPIC_KEY
    stream = io.StringIO()
    with only_the_gateway_handler(stream) as handler:
        assert _sole_json_handler(access, logging.INFO) is handler  # the fast path is the one under test
        fast = await client.get(secret_path, headers={"X-Request-Id": "rid-fast"})
        logging.getLogger().addHandler(extra := logging.StreamHandler(io.StringIO()))
        assert _sole_json_handler(access, logging.INFO) is None
        slow = await client.get(secret_path, headers={"X-Request-Id": "rid-slow"})
        logging.getLogger().removeHandler(extra)
    assert fast.status == slow.status == 404 and fast.headers["X-Request-Id"] == "rid-fast"
    assert ANTHROPIC_KEY[len("sk-ant-"):] not in stream.getvalue()
    lines = {r["request_id"]: r for r in map(json.loads, stream.getvalue().splitlines()) if r["event"] == "request"}
    assert lines.keys() == {"rid-fast", "rid-slow"}
    assert lines["rid-fast"]["path"] == "/nope/[REDACTED]"
    for line in lines.values():
        del line["timestamp"], line["duration_ms"], line["request_id"]
    assert list(lines["rid-fast"].items()) == list(lines["rid-slow"].items())  # same keys, same order


class _CountedWrites(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_tick_go_out_in_one_write_in_order_and_a_flush_loses_none():
    """Access lines made in one event-loop tick are written together at its end; each keeps the request
    id current when it was made; a record logged meanwhile goes after them; flush (logging.shutdown at
    exit) writes what waits."""
    from gateway.logs import JsonFormatter, JsonLinesHandler, log_event, request_id_var

    stream = _CountedWrites()
    handler = JsonLinesHandler(stream, JsonFormatter())
    logger = logging.getLogger("rag_sidecar.test_coalesce")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        for rid in ("r0", "r1", "r2"):
            token = request_id_var.set(rid)
            log_event(logger, logging.INFO, "request", {"event": "request", "n": rid})
            request_id_var.reset(token)
        assert stream.getvalue() == ""  # held until the end of this tick
        await asyncio.sleep(0)  # one loop iteration: the end-of-tick write runs first
        assert stream.writes == 1
        assert [json.loads(x)["request_id"] for x in stream.getvalue().splitlines()] == ["r0", "r1", "r2"]
        log_event(logger, logging.INFO, "request", {"event": "request", "n": "r3"})
        logger.warning("a record in the same tick")
        log_event(logger, logging.INFO, "request", {"event": "request", "n": "r4"})
        handler.flush()  # what logging.shutdown does at exit: nothing waiting is lost
        got = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [r.get("n", r["msg"]) for r in got] == ["r0", "r1", "r2", "r3", "a record in the same tick", "r4"]
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = True, logging.NOTSET


class _TimedWrites(io.StringIO):
    """Remembers the loop time of each write and wakes a waiter."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.wrote = asyncio.Event()

    def write(self, text: str) -> int:
        self.times.append(asyncio.get_running_loop().time())
        self.wrote.set()
        return super().write(text)


async def test_lines_of_busy_ticks_share_a_write_held_no_longer_than_the_window():
    """After a write, lines of the next ticks wait for window_s after it (one write for many ticks under
    load), never longer; a record logged meanwhile writes them first; nothing is lost or reordered."""
    from gateway.logs import JsonFormatter, JsonLinesHandler, log_event

    stream = _TimedWrites()
    handler = JsonLinesHandler(stream, JsonFormatter())
    handler.window_s = 0.05
    logger = logging.getLogger("rag_sidecar.test_window")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    loop = asyncio.get_running_loop()
    try:
        log_event(logger, logging.INFO, "request", {"event": "request", "n": 0})
        await asyncio.sleep(0)  # idle before: written at the end of its tick
        assert len(stream.times) == 1
        stream.wrote.clear()
        made = loop.time()
        for n in range(1, 6):  # five busy ticks within the window: held, then one write
            log_event(logger, logging.INFO, "request", {"event": "request", "n": n})
            await asyncio.sleep(0)
        assert len(stream.times) == 1
        await asyncio.wait_for(stream.wrote.wait(), timeout=5)
        assert len(stream.times) == 2 and stream.times[1] - stream.times[0] >= handler.window_s
        assert stream.times[1] - made <= handler.window_s + 0.04  # not held past the window (+ loop slack)
        log_event(logger, logging.INFO, "request", {"event": "request", "n": 6})  # held again...
        logger.warning("a record meanwhile")  # ...until this record writes it first
        log_event(logger, logging.INFO, "request", {"event": "request", "n": 7})
        handler.flush()  # logging.shutdown at exit
        got = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [r.get("n", r["msg"]) for r in got] == [0, 1, 2, 3, 4, 5, 6, "a record meanwhile", 7]
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = True, logging.NOTSET


async def test_a_serving_process_writes_every_access_line_before_it_exits(data_dir, tmp_path):
    """A real `serve` (the gateway's handler alone, so the fast path): concurrent requests each get their
    line with their request id, redacted, and the last ones are written before a SIGTERM'd exit."""
    import signal

    import aiohttp

    from tests.serve_proc import ServeProcess

    gw = await ServeProcess(data_dir, tmp_path / "serve.log", RAG_SIDECAR__LOGGING__LEVEL="INFO").start()
    try:
        async with aiohttp.ClientSession() as http:
            async def get(i: int) -> int:
                async with http.get(f"{gw.url}/nope/{ANTHROPIC_KEY}", headers={"X-Request-Id": f"rid-{i}"}) as r:
                    return r.status
            assert await asyncio.gather(*(get(i) for i in range(20))) == [404] * 20
        gw.signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
    finally:
        gw.stop()
    lines = [e for e in gw.logs() if e.get("event") == "request" and e["route"].startswith("/nope")]
    assert sorted(e["request_id"] for e in lines) == sorted(f"rid-{i}" for i in range(20))
    assert {e["path"] for e in lines} == {"/nope/[REDACTED]"}
    assert ANTHROPIC_KEY[len("sk-ant-"):] not in gw.log_path.read_text()


async def test_lines_held_for_the_write_window_survive_a_new_setup_logging():
    """setup_logging replaces its handler (create_app does it): a line held for the write window (made
    within window_s of the last write) is written to the old stream, not dropped with the old handler."""
    from gateway.logs import log_event
    from gateway.middleware import log as access

    first, second = io.StringIO(), io.StringIO()
    with only_the_gateway_handler(first) as handler:
        handler.window_s = 60.0  # whatever comes after the first write waits for the window
        log_event(access, logging.INFO, "request", {"event": "request", "n": 1})
        await asyncio.sleep(0)  # written at the end of its tick
        log_event(access, logging.INFO, "request", {"event": "request", "n": 2})
        await asyncio.sleep(0)  # held for the window
        assert [json.loads(x)["n"] for x in first.getvalue().splitlines()] == [1]
        setup_logging("INFO", "json", stream=second)
        assert [json.loads(x)["n"] for x in first.getvalue().splitlines()] == [1, 2]


def test_a_loop_closed_before_its_end_of_tick_write_does_not_hold_later_lines():
    """A loop stopped and closed with the end-of-tick write still queued: the next loop's line schedules
    its own write, which takes the orphaned line along (nothing waits for a flush at exit)."""
    from gateway.logs import JsonFormatter, JsonLinesHandler, log_event

    stream = io.StringIO()
    handler = JsonLinesHandler(stream, JsonFormatter())
    logger = logging.getLogger("rag_sidecar.test_closed_loop")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO

    async def write_then_stop(n: int, stop: bool) -> None:
        log_event(logger, logging.INFO, "request", {"event": "request", "n": n})
        if stop:  # the loop ends with this iteration: the queued end-of-tick write never runs
            asyncio.get_running_loop().stop()
            await asyncio.Event().wait()

    try:
        first = asyncio.new_event_loop()
        with pytest.raises(RuntimeError, match="stopped before"):
            first.run_until_complete(write_then_stop(1, stop=True))
        first.close()
        assert stream.getvalue() == ""
        asyncio.run(write_then_stop(2, stop=False))
        assert [json.loads(x)["n"] for x in stream.getvalue().splitlines()] == [1, 2]
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = True, logging.NOTSET


class _NotJson:
    def __str__(self) -> str:
        return 'not-json "quoted" é'


_FIELD_VALUES: dict[str, Any] = {
    "escapes": 'quote " backslash \\ newline \n tab \t nul \x00 unit \x1f del \x7f ls \u2028',
    "non_ascii": "thé 日本語 🙂 Ω",
    "surrogate": "lone \ud800 half",
    "floats": [0.1, 1e-7, 1e300, -0.0, 3.0, float("nan"), float("inf"), -float("inf")],
    "big_ints": [2**100, -(2**70), 0, True, False],
    "none": None, "true": True, "false": False,
    "nested": {"a": [1, {"b": None, "c": [[], {}]}], "tuple": (1, "x"), 7: "int key", None: "none key",
               2.5: "float key", True: "bool key"},
    "secrets": ["sk-ant-api03-Zq8Xw2Lm5Nv7Bc1Df4Gh6Jk9", "Bearer abcdefgh12345678",
                "b'GET / HTTP/1.1\\r\\nX-Api-Key: hunter2\\r\\n'", "cookie: a=b; c=d"],
    "key sk-ant-0123456789abcdef": "a secret in a key",
    "not_json": _NotJson(), "a_set": {3}, "bytes": b"\xff\x00",
    "dd.trace_id": "123", "empty": "", "empty_list": [], "empty_dict": {},
}


@pytest.mark.parametrize("static", [{}, {"service": "rag-sidecar", "env": "prod", "version": "1.2 \"beta\""}])
@pytest.mark.parametrize("rid", [None, "f0a4248e7d1ae8f3af5d60309561563c", "odd \"rid\" é \ud800"])
def test_access_line_fast_encoder_writes_the_logging_lines_bytes(static, rid, monkeypatch):
    """format_fields (the access log's fast path) splices its line from pieces; each line must be the one
    logging's own path writes for the same record, byte for byte: every kind of value the encoder
    meets, escapes, non-ASCII, surrogates, secrets redacted, objects falling back to str()."""
    from gateway.logs import JsonFormatter, request_id_var

    fmt = JsonFormatter(static)
    logger = logging.getLogger("rag_sidecar.access")
    cases = [{"event": "request", "method": "POST", "status": 200, "duration_ms": 0.214}]
    cases += [{"event": "request", key: value} for key, value in _FIELD_VALUES.items()]
    cases.append(dict(_FIELD_VALUES))
    token = request_id_var.set(rid)
    try:
        for level, msg in ((logging.INFO, "request"), (logging.WARNING, "odd \"msg\" sk-ant-0123456789abcdef")):
            for fields in cases:
                record = logger.makeRecord(logger.name, level, __file__, 1, msg, (), None, extra=fields)
                record.created, record.msecs = 1_700_000_000.25, 250.0
                spliced = fmt._spliced(record.created, logger.name, level, msg, rid, fields)
                # The fast path is the one under test, except for what orjson refuses (a lone surrogate, an
                # int beyond 64 bits): those lines take the ordinary path whole.
                refused = (rid is not None and "\ud800" in rid) or "surrogate" in fields or "big_ints" in fields
                assert (spliced is None) == refused, fields
                line = fmt.format_fields(logger.name, level, msg, fields, created=record.created)
                assert line == (spliced if spliced is not None else line)
                assert line == fmt.format(record), fields
                json.loads(line)  # one object per line, whatever path wrote it
    finally:
        request_id_var.reset(token)
    # Keys the logging line places elsewhere or drops take the ordinary path: same bytes again.
    for odd in ({"msg": "x"}, {"request_id": "x"}, {"timestamp": "x"}, {"_private": 1}, {"name": "x"},
                {"event": "e", 7: "int key"}, *({key: "x"} for key in static)):
        fields = {"event": "request", **odd}
        assert fmt._spliced(1_700_000_000.25, "rag_sidecar.access", logging.INFO, "request", None, fields) is None
        if 7 not in odd:
            assert fmt.format_fields("rag_sidecar.access", logging.INFO, "request", fields, created=1_700_000_000.25) \
                == fmt._line(1_700_000_000.25, 250.0, "info", "rag_sidecar.access", "request", fields.items(), None)
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        fmt.format_fields("rag_sidecar.access", logging.INFO, "request", {"event": "request", "loop": circular})
    # Static fields that _line overrides in place: the ordinary path, same bytes.
    for odd_static in ({"request_id": "static"}, {"msg": "static", "level": "static"}):
        odd_fmt = JsonFormatter(odd_static)
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "request", (), None, extra=cases[0])
        record.created, record.msecs = 1_700_000_000.25, 250.0
        token = request_id_var.set(rid)
        try:
            assert odd_fmt.format_fields(logger.name, logging.INFO, "request", cases[0], created=record.created) \
                == odd_fmt.format(record)
        finally:
            request_id_var.reset(token)
    # Inside a span (tracing on) the line carries its ids, as logging's line does.
    from opentelemetry import trace

    monkeypatch.setattr("gateway.tracing._ENABLED", True)
    span = trace.NonRecordingSpan(trace.SpanContext(0xABC << 64 | 0xDEF, 0x123, is_remote=False))
    with trace.use_span(span):
        for fields, trace_id in (({"event": "request"}, str(0xDEF)), ({"dd.trace_id": "given"}, "given")):
            record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "request", (), None, extra=fields)
            record.created, record.msecs = 1_700_000_000.25, 250.0
            line = fmt.format_fields(logger.name, logging.INFO, "request", fields, created=record.created)
            assert line == fmt.format(record) and json.loads(line)["dd.trace_id"] == trace_id


async def test_a_line_built_at_its_write_keeps_its_requests_id_and_time_and_a_bad_one_loses_only_itself(
        monkeypatch):
    """Lines are built when they are written (a row of them with warm caches), outside the request's
    context: each keeps the request id and the time of its call, and one whose fields cannot be encoded is
    reported and dropped without taking the others along."""
    from gateway import logs
    from gateway.logs import log_event, request_id_var
    from gateway.middleware import log as access

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    reported: list[str] = []
    stream = io.StringIO()
    with only_the_gateway_handler(stream) as handler:
        monkeypatch.setattr(handler, "handleError", lambda record: reported.append(record.getMessage()))
        handler.window_s = 60.0
        log_event(access, logging.INFO, "warm", {"event": "request", "n": 0})
        await asyncio.sleep(0)  # the first write: what follows waits for the window
        for n, rid, when in ((1, "rid-one", 1_700_000_000.125), (2, "rid-two", 1_700_000_001.5)):
            token = request_id_var.set(rid)
            try:
                with monkeypatch.context() as m:
                    m.setattr(logs.time, "time", lambda when=when: when)
                    log_event(access, logging.INFO, "request", {"event": "request", "n": n})
                    if n == 1:
                        log_event(access, logging.INFO, "request", {"event": "request", "bad": Unprintable()})
            finally:
                request_id_var.reset(token)
        assert stream.getvalue().count("\n") == 1  # held, not built yet
        handler.flush()  # built now, with no request id current and another clock
    lines = [json.loads(x) for x in stream.getvalue().splitlines()][1:]
    assert [(x["n"], x["request_id"], x["timestamp"]) for x in lines] == [
        (1, "rid-one", "2023-11-14T22:13:20.125Z"), (2, "rid-two", "2023-11-14T22:13:21.500Z")]
    assert reported == ["request"]
