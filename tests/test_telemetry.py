"""Metrics as an SRE receives them: a fake DogStatsD agent (real UDP / Unix datagram sockets) and the
Prometheus text of /metrics, both checked against the catalogue in gateway/telemetry/catalogue.py."""
from __future__ import annotations

import logging
import math
import re
import socket
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ConfigError, TelemetryConfig, load_settings
from gateway.contract import Mode
from gateway.telemetry import CATALOGUE, MODES, Telemetry, catalogue_markdown, render_doc
from tests.conftest import make_settings, state_of

DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
CONSTANT = {"env": "test", "service": "rag-sidecar", "version": "9.9.9"}
DD_TYPES = {"count": "c", "gauge": "g", "distribution": "d", "histogram": "h"}
SPECS = {f"rag.{s.name}": s for s in CATALOGUE}


# ---- a fake DogStatsD agent -------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    type: str
    tags: tuple[tuple[str, str], ...]  # sorted (key, value) pairs

    @property
    def tag(self) -> dict[str, str]:
        return dict(self.tags)


def parse_datagram(payload: bytes) -> list[Sample]:
    """DogStatsD lines: ``name:value[:value…]|type[|@rate][|#k:v,…][|c:container]…``."""
    out = []
    for line in payload.decode().splitlines():
        if not line:
            continue
        head, kind, *fields = line.split("|")
        name, *values = head.split(":")
        tags: list[tuple[str, str]] = []
        for f in fields:
            if f.startswith("#"):
                tags = [tuple(t.split(":", 1)) for t in f[1:].split(",")]  # type: ignore[misc]
        out.extend(Sample(name, float(v), kind, tuple(sorted(tags))) for v in values)
    return out


class FakeAgent:
    """A datagram socket the gateway sends metrics to; ``collect`` waits (bounded) for what a test needs."""

    def __init__(self, family: int, address: str | tuple[str, int]) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.samples: list[Sample] = []
        self.lines: list[str] = []  # raw, for wire-format assertions

    @property
    def udp_url(self) -> str:
        host, port = self.sock.getsockname()
        return f"udp://{host}:{port}"

    def collect(self, done: Callable[[list[Sample]], bool], timeout_s: float = 5.0) -> list[Sample]:
        """Receive until ``done(samples)`` (everything received so far) is true; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(self.samples):
            left = deadline - time.monotonic()
            if left <= 0:
                names = sorted({s.name for s in self.samples})
                raise AssertionError(f"fake agent: condition not met in {timeout_s}s; got {names}")
            self.sock.settimeout(left)
            try:
                payload = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(payload.decode().splitlines())
            self.samples.extend(s for s in parse_datagram(payload) if s.name.startswith("rag."))
        return self.samples

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_agent() -> Iterator[FakeAgent]:
    agent = FakeAgent(socket.AF_INET, ("127.0.0.1", 0))
    yield agent
    agent.close()


@pytest.fixture
def uds_agent() -> Iterator[tuple[FakeAgent, str]]:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # AF_UNIX paths must stay short (108 bytes)
        path = f"{d}/dsd.sock"
        agent = FakeAgent(socket.AF_UNIX, path)
        yield agent, f"unix://{path}"
        agent.close()


def totals(samples: list[Sample], name: str, **tags: str) -> float:
    """Sum of a count's values (the client aggregates) over samples whose tags include ``tags``."""
    return sum(s.value for s in samples if s.name == name and tags.items() <= s.tag.items())


def having(name: str, **tags: str) -> Callable[[list[Sample]], bool]:
    return lambda samples: any(s.name == name and tags.items() <= s.tag.items() for s in samples)


def all_of(*conds: Callable[[list[Sample]], bool]) -> Callable[[list[Sample]], bool]:
    return lambda samples: all(c(samples) for c in conds)


def telemetry_for(url: str, flush_interval_s: float = 0) -> Telemetry:
    return Telemetry(TelemetryConfig(dogstatsd_url=url, **CONSTANT), flush_interval_s=flush_interval_s)


def drive_every_method(t: Telemetry) -> None:
    """One call of every facade method, as the gateway makes them."""
    t.request_started("/v1/query")
    t.request_finished("/v1/query", 200, "keyword_fallback", True, 12.5)
    t.degradation("vector_db", "breaker_open")
    t.rate_limited("/v1/query")
    t.cache_result("miss")
    t.keyword_search(0.75, 3)
    t.kb_state("v7", 42, 3600.0, evaluation={"normal": {"precision@5": 0.6}})
    t.on_attempt("embedder", "success", 0.25)
    t.on_retry("embedder", "timeout")
    t.on_shed("llm")
    t.on_short_circuit("vector_db")
    t.on_state_change("vector_db", "closed", "open")
    t.job_submitted(2)
    t.job_rejected("quota")
    t.job_item("degraded", 40.0)
    t.job_retry("degraded")
    t.job_webhook("retry")
    t.job_queue(7, 2, 30.0)
    t.llm_first_token("claude-haiku-4-5", 840.0)
    t.llm_stream_outcome("claude-haiku-4-5", "cut")


# ---- the catalogue ----------------------------------------------------------------------------
def test_catalogue_is_consistent():
    names = [s.name for s in CATALOGUE]
    assert len(names) == len(set(names))
    assert len({s.prometheus_name() for s in CATALOGUE}) == len(CATALOGUE)
    for s in CATALOGUE:
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", s.name), s.name  # <component>.<what>, no namespace
        assert s.type in DD_TYPES and s.description
        assert set(s.values) <= set(s.tags)
        assert s.plotted or s.unplotted_reason, f"{s.name}: unplotted without a reason"
        if s.type in ("distribution", "histogram"):
            assert s.unit == "ms", f"{s.name}: latency metrics are recorded in ms (exposed in s to Prometheus)"
    assert set(MODES) - {"none"} == {m.value for m in Mode}, "the mode tag's values are the contract's modes"


def test_observability_doc_has_the_current_catalogue():
    text = DOC.read_text(encoding="utf-8")
    assert render_doc(text) == text, "docs/observability.md is stale: run `python -m gateway.telemetry`"
    assert catalogue_markdown() in text


# ---- DogStatsD --------------------------------------------------------------------------------
EXPECTED = {  # (name, type, value, tags without the constant ones), one per call in drive_every_method
    ("rag.request.in_flight", "g", 0.0, ()),
    ("rag.request.count", "c", 1.0, (("degraded", "true"), ("mode", "keyword_fallback"), ("route", "/v1/query"),
                                     ("status", "200"), ("status_class", "2xx"))),
    ("rag.request.duration", "d", 12.5, (("mode", "keyword_fallback"), ("route", "/v1/query"))),
    ("rag.degradation.count", "c", 1.0, (("component", "vector_db"), ("reason", "breaker_open"))),
    ("rag.rate_limit.rejected", "c", 1.0, (("route", "/v1/query"),)),
    ("rag.cache.results", "c", 1.0, (("result", "miss"),)),
    ("rag.keyword_fallback.duration", "d", 0.75, ()),
    ("rag.keyword_fallback.searches", "c", 1.0, (("result", "found"),)),
    ("rag.kb.info", "g", 1.0, (("kb_version", "v7"),)),
    ("rag.kb.chunks", "g", 42.0, ()),
    ("rag.dependency.attempts", "c", 1.0, (("dependency", "embedder"), ("outcome", "success"))),
    ("rag.dependency.duration", "d", 250.0, (("dependency", "embedder"), ("outcome", "success"))),  # 0.25 s
    ("rag.dependency.retries", "c", 1.0, (("dependency", "embedder"), ("reason", "timeout"))),
    ("rag.dependency.shed", "c", 1.0, (("dependency", "llm"),)),
    ("rag.dependency.short_circuits", "c", 1.0, (("dependency", "vector_db"),)),
    ("rag.breaker.state", "g", 2.0, (("dependency", "vector_db"),)),
    ("rag.breaker.transitions", "c", 1.0, (("dependency", "vector_db"), ("from", "closed"), ("to", "open"))),
    ("rag.jobs.submitted", "c", 2.0, ()),
    ("rag.jobs.rejected", "c", 1.0, (("reason", "quota"),)),
    ("rag.jobs.items", "c", 1.0, (("outcome", "degraded"),)),
    ("rag.jobs.item.duration", "d", 40.0, (("outcome", "degraded"),)),
    ("rag.jobs.retries", "c", 1.0, (("reason", "degraded"),)),
    ("rag.jobs.webhooks", "c", 1.0, (("outcome", "retry"),)),
    ("rag.jobs.queue.depth", "g", 7.0, ()),
    ("rag.jobs.queue.in_flight", "g", 2.0, ()),
    ("rag.jobs.queue.oldest_age", "g", 30.0, ()),
    ("rag.llm.first_token", "d", 840.0, (("model", "claude-haiku-4-5"),)),
    ("rag.llm.streams", "c", 1.0, (("model", "claude-haiku-4-5"), ("outcome", "cut"))),
}


def _strip_constant(s: Sample) -> tuple[str, str, float, tuple[tuple[str, str], ...]]:
    return s.name, s.type, s.value, tuple(kv for kv in s.tags if kv[0] not in CONSTANT)


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_fake_agent_receives_exact_names_types_units_and_tags(transport, udp_agent, uds_agent):
    agent, url = (udp_agent, udp_agent.udp_url) if transport == "udp" else uds_agent
    t = telemetry_for(url, flush_interval_s=0)
    try:
        drive_every_method(t)
        assert t.flush()
        # Wait for every catalogue name, not only EXPECTED's: the gauges may come in a later datagram.
        samples = agent.collect(lambda got: {_strip_constant(s)[:2] for s in got} >= {e[:2] for e in EXPECTED}
                                and {s.name for s in got} >= set(SPECS))
    finally:
        t.close_sync()
    got = {_strip_constant(s) for s in samples}
    kb_age = [s for s in samples if s.name == "rag.kb.age"]
    assert got >= EXPECTED, f"missing: {EXPECTED - got}"
    assert {s.name for s in samples} == set(SPECS), "every catalogue metric, nothing else"
    for s in samples:
        assert s.type == DD_TYPES[SPECS[s.name].type], s
        assert {k: v for k, v in s.tags if k in CONSTANT} == CONSTANT, s
        assert [k for k, _ in s.tags if k not in CONSTANT] == sorted(SPECS[s.name].tags), s
    assert kb_age and all(3600 <= s.value < 3700 and s.type == "g" for s in kb_age)  # seconds


def test_counts_are_summed_and_distribution_values_packed_per_line(udp_agent):
    t = telemetry_for(udp_agent.udp_url)
    durations = [float(i) + 0.5 for i in range(120)]
    try:
        for ms in durations:
            t.degradation("llm", "timeout")
            t.on_attempt("llm", "timeout", ms / 1e3)
        assert t.flush()
        udp_agent.collect(lambda got: sum(s.name == "rag.dependency.duration" for s in got) == len(durations))
    finally:
        t.close_sync()
    degradations = [s for s in udp_agent.samples if s.name == "rag.degradation.count"]
    assert [(s.value, s.type) for s in degradations] == [(120.0, "c")]  # one line: summed over the flush
    received = sorted(s.value for s in udp_agent.samples if s.name == "rag.dependency.duration")
    assert received == pytest.approx(durations, abs=1e-3)  # every value, in ms
    packed = [line for line in udp_agent.lines if line.startswith("rag.dependency.duration:")]
    assert [line.split("|")[0].count(":") for line in packed] == [50, 50, 20]  # values per line


def test_settings_from_dd_env_vars_reach_the_agent(udp_agent, monkeypatch):
    # DogStatsd itself also reads DD_ENV/DD_SERVICE from os.environ: the config's values must win, once.
    monkeypatch.setenv("DD_ENV", "from-process-env")
    settings = load_settings(None, env={"DD_DOGSTATSD_URL": udp_agent.udp_url, "DD_ENV": "staging",
                                        "DD_SERVICE": "rag-eu", "DD_VERSION": "2.0.1"})
    t = Telemetry(settings.telemetry, flush_interval_s=0)
    try:
        t.degradation("llm", "timeout")
        assert t.flush()
        samples = udp_agent.collect(having("rag.degradation.count"))
    finally:
        t.close_sync()
    [sample] = [s for s in samples if s.name == "rag.degradation.count"]
    assert sample.tags == (("component", "llm"), ("env", "staging"), ("reason", "timeout"),
                                             ("service", "rag-eu"), ("version", "2.0.1"))


def test_agent_host_and_port_settings(udp_agent):
    host, port = udp_agent.sock.getsockname()
    t = Telemetry(TelemetryConfig(agent_host=host, dogstatsd_port=port), flush_interval_s=0)
    try:
        t.cache_result("stale_serve")
        assert t.flush()
        udp_agent.collect(having("rag.cache.results", result="stale_serve", service="rag-sidecar"))
    finally:
        t.close_sync()


def test_gauges_are_resent_while_the_gateway_is_quiet(udp_agent):
    t = telemetry_for(udp_agent.udp_url, flush_interval_s=0.05)
    try:
        t.track_dependencies(["llm"])
        t.kb_state("v1", 5, 10.0)
        udp_agent.collect(lambda got: sum(s.name == "rag.breaker.state" for s in got) >= 3, timeout_s=10)
    finally:
        t.close_sync()
    assert {s.tag["dependency"] for s in udp_agent.samples if s.name == "rag.breaker.state"} == {"llm"}
    assert sum(s.name == "rag.kb.info" for s in udp_agent.samples) >= 2


def test_no_agent_means_dropped_silently_and_cheaply(tmp_path, caplog):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_udp = f"udp://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()  # nothing listens there any more (ICMP port unreachable)
    for url in (dead_udp, f"unix://{tmp_path}/missing.sock"):
        t = telemetry_for(url, flush_interval_s=0)
        try:
            t0 = time.perf_counter()
            for _ in range(2000):
                drive_every_method(t)
            per_round_us = (time.perf_counter() - t0) / 2000 * 1e6
            t.flush()
        finally:
            t.close_sync()
        # 12 calls per round at ~0.1 µs each; 2 ms would mean I/O on the caller's thread.
        assert per_round_us < 2000, (url, per_round_us)
    # DogStatsd warns on every failed send; we let one per 5 minutes through (per message).
    warnings = [r for r in caplog.records if r.name == "datadog.dogstatsd" and r.levelno >= logging.WARNING]
    assert len(warnings) <= 2


def test_bad_dogstatsd_url_fails_fast_naming_the_key():
    with pytest.raises(ConfigError, match=r"^telemetry\.dogstatsd_url"):
        Telemetry(TelemetryConfig(dogstatsd_url="tcp://127.0.0.1:8125"))


def test_statsd_disabled_still_keeps_prometheus_series():
    t = Telemetry(TelemetryConfig(statsd_enabled=False))
    assert t.statsd is None
    t.degradation("embedder", "timeout")
    families = {f.name: f for f in text_string_to_metric_families(t.prometheus_text().decode())}
    [sample] = families["rag_degradation_count"].samples
    assert sample.labels == {"component": "embedder", "reason": "timeout"} and sample.value == 1
    assert Telemetry(None).statsd is None
    assert Telemetry(TelemetryConfig(prometheus=False, statsd_enabled=False)).prometheus_text() == b""


def test_route_tags_are_canonical_patterns_only(udp_agent):
    t = telemetry_for(udp_agent.udp_url, flush_interval_s=0)
    try:
        t.register_routes(["/v1/query", "/admin/breakers/{name}/{action}"])
        t.request_started("/wp-login.php")
        t.request_finished("/wp-login.php", 404, None, False, 0.4)
        t.request_started("/admin/breakers/{name}/{action}")
        t.request_finished("/admin/breakers/{name}/{action}", 200, None, False, 1.0)
        assert t.flush()
        udp_agent.collect(having("rag.request.count", route="/admin/breakers/:name/:action"))
        udp_agent.collect(having("rag.request.count", route="unmatched", status="404", mode="none"))
    finally:
        t.close_sync()
    assert not any("wp-login" in v for s in udp_agent.samples for _, v in s.tags)


# ---- Prometheus ---------------------------------------------------------------------------------
def prometheus_series(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{catalogue name: {sorted labels: value}}; counters by their _total, histograms by their _count."""
    by_prom = {s.prometheus_name(): s for s in CATALOGUE}
    out: dict[str, dict] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        spec = by_prom[fam.name]  # nothing outside the catalogue
        want = {"count": fam.name + "_total", "gauge": fam.name}.get(spec.type, fam.name + "_count")
        for s in fam.samples:
            if s.name == want:
                out[f"rag.{spec.name}"][tuple(sorted(s.labels.items()))] = s.value
    return out


def test_prometheus_text_parses_and_carries_the_same_series(udp_agent):
    t = telemetry_for(udp_agent.udp_url, flush_interval_s=0)
    try:
        drive_every_method(t)
        assert t.flush()
        prom = prometheus_series(t.prometheus_text().decode())
        expected = {(name, labels) for name, series in prom.items() for labels in series}

        def series(got: list[Sample]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
            return {(s.name, tuple(kv for kv in s.tags if kv[0] not in CONSTANT)) for s in got}

        samples = udp_agent.collect(lambda got: series(got) >= expected)  # one flush spans several datagrams
    finally:
        t.close_sync()
    assert series(samples) == expected
    assert prom["rag.dependency.duration"][(("dependency", "embedder"), ("outcome", "success"))] == 1
    assert prom["rag.breaker.state"][(("dependency", "vector_db"),)] == 2
    assert 3600 <= prom["rag.kb.age"][()] < 3700


def test_prometheus_kb_age_is_unknown_before_a_kb_and_old_versions_disappear():
    t = Telemetry(None)
    assert math.isnan(prometheus_series(t.prometheus_text().decode())["rag.kb.age"][()])
    t.kb_state("v1", 10, 1.0)
    t.kb_state("v2", 12, 0.0)
    assert prometheus_series(t.prometheus_text().decode())["rag.kb.info"] == {(("kb_version", "v2"),): 1.0}


# ---- through the gateway ------------------------------------------------------------------------
def _statsd_overrides(url: str) -> dict[str, object]:
    # Generous embedder/vector timeouts: the "normal path" must not degrade on a loaded CI machine.
    return {"telemetry.statsd_enabled": True, "telemetry.dogstatsd_url": url, "telemetry.env": "test",
            "telemetry.version": "9.9.9", "resilience.embedder.timeout_s": 20.0,
            "resilience.vector_db.timeout_s": 20.0}


@pytest.mark.parametrize("transport", ["udp", "unix"])
async def test_gateway_requests_on_normal_and_degraded_paths(transport, gateway_factory, data_dir, udp_agent,
                                                             uds_agent):
    agent, url = (udp_agent, udp_agent.udp_url) if transport == "udp" else uds_agent
    client = await gateway_factory(make_settings(data_dir, **_statsd_overrides(url)))
    state = state_of(client)
    kb_version = state.kb.version

    # normal path: vector retrieval + extractive answer
    resp = await client.post("/v1/query", json={"query": "What temperature should water be for green tea?"})
    body = await resp.json()
    assert resp.status == 200 and body["mode"] == "extractive" and body["degraded"] is False
    assert state.telemetry.flush()
    agent.collect(all_of(
        having("rag.request.count", route="/v1/query", status="200", status_class="2xx", mode="extractive",
               degraded="false", **CONSTANT),
        having("rag.dependency.duration", dependency="vector_db", outcome="success"),
        having("rag.dependency.duration", dependency="embedder", outcome="success"),
        having("rag.kb.info", kb_version=kb_version)))
    normal = list(agent.samples)
    [duration] = [s for s in normal if s.name == "rag.request.duration" and s.tag["route"] == "/v1/query"]
    assert duration.type == "d" and duration.tag["mode"] == "extractive"
    assert body["timings_ms"]["total"] <= duration.value < body["timings_ms"]["total"] + 1000  # ms, not s
    [embed] = [s for s in normal if s.name == "rag.dependency.duration" and s.tag["dependency"] == "embedder"]
    assert embed.value <= body["timings_ms"]["embed"] + 0.5 and embed.value > 0
    assert {s.tag["dependency"]: s.value for s in normal if s.name == "rag.breaker.state"} == {
        "embedder": 0, "vector_db": 0, "llm:claude-sonnet-4-6": 0, "llm:claude-haiku-4-5": 0}
    assert totals(normal, "rag.degradation.count") == 0

    # degraded path: vector DB breaker held open → keyword fallback (still an extractive answer)
    state.guards["vector_db"].breaker.force_open()
    resp = await client.post("/v1/query", json={"query": "How long should green tea steep?"})
    body = await resp.json()
    assert resp.status == 200 and body["mode"] == "extractive" and body["degraded"] is True
    assert body["sources"][0]["retriever"] == "bm25"
    assert body["degradations"][0] == {"component": "vector_db", "reason": "breaker_open"}
    assert state.telemetry.flush()
    agent.collect(all_of(
        having("rag.request.count", route="/v1/query", mode="extractive", degraded="true"),
        having("rag.degradation.count", component="vector_db", reason="breaker_open"),
        having("rag.dependency.short_circuits", dependency="vector_db"),
        having("rag.breaker.transitions", dependency="vector_db", to="open"),
        having("rag.keyword_fallback.searches", result="found"),
        having("rag.keyword_fallback.duration")))
    samples = agent.samples
    assert totals(samples, "rag.breaker.transitions", dependency="vector_db", **{"from": "closed", "to": "open"}) == 1
    assert [s.value for s in samples if s.name == "rag.breaker.state" and s.tag["dependency"] == "vector_db"][-1] == 2
    [kw] = [s for s in samples if s.name == "rag.keyword_fallback.duration"]
    assert kw.type == "d" and 0 < kw.value <= body["timings_ms"]["keyword_search"] + 0.01
    for s in samples:
        assert s.type == DD_TYPES[SPECS[s.name].type] and {k: v for k, v in s.tags if k in CONSTANT} == CONSTANT
        for key, allowed in SPECS[s.name].values.items():
            assert s.tag[key] in allowed, s

    # /metrics: same catalogue, same series
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    prom = prometheus_series(await resp.text())
    queries = prom["rag.request.count"]
    assert queries[(("degraded", "true"), ("mode", "extractive"), ("route", "/v1/query"), ("status", "200"),
                    ("status_class", "2xx"))] == 1
    assert prom["rag.breaker.state"][(("dependency", "vector_db"),)] == 2
    assert prom["rag.kb.info"] == {(("kb_version", kb_version),): 1}
    statsd = {(s.name, tuple(kv for kv in s.tags if kv[0] not in CONSTANT)) for s in samples}
    assert statsd <= {(name, labels) for name, series in prom.items() for labels in series}


async def test_metrics_endpoint_is_404_when_prometheus_is_off(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"telemetry.prometheus": False}))
    resp = await client.get("/metrics")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found"


async def test_reading_health_metrics_and_admin_never_moves_an_open_breaker(gateway_factory, data_dir):
    """An open breaker whose interval has passed stays ``open`` in the gauge and makes no transition
    until a query probes it: /health, /metrics and GET /admin/breakers only read."""
    from tests.conftest import JumpClock

    clock = JumpClock()
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "t0ken"}), clock)
    state = state_of(client)
    state.guards["vector_db"].breaker.trip()
    clock.advance(state.guards["vector_db"].breaker.config.open_s + 1)
    for _ in range(3):
        assert (await client.get("/health")).status == 200
        assert (await client.get("/admin/breakers", headers={"Authorization": "Bearer t0ken"})).status == 200
        prom = prometheus_series(await (await client.get("/metrics")).text())
        assert prom["rag.breaker.state"][(("dependency", "vector_db"),)] == 2, "a read moved the breaker"
    moves = {k: v for k, v in prom["rag.breaker.transitions"].items() if ("dependency", "vector_db") in k}
    assert moves == {(("dependency", "vector_db"), ("from", "closed"), ("to", "open")): 1}
    # a query is what probes it: open → half_open → closed
    assert (await client.post("/v1/query", json={"query": "green tea"})).status == 200
    prom = prometheus_series(await (await client.get("/metrics")).text())
    assert prom["rag.breaker.state"][(("dependency", "vector_db"),)] == 0
    assert prom["rag.breaker.transitions"][(("dependency", "vector_db"), ("from", "open"), ("to", "half_open"))] == 1


async def test_unavailable_answers_are_counted_as_unavailable(gateway_factory, data_dir):
    """A 503 whose body says ``mode: unavailable`` is counted (and logged) as unavailable, not full."""
    client = await gateway_factory(make_settings(data_dir, **{"fallback.keyword_index": False}))
    state = state_of(client)
    state.guards["vector_db"].breaker.force_open()
    resp = await client.post("/v1/query", json={"query": "green tea"})
    body = await resp.json()
    assert resp.status == 503 and body["mode"] == "unavailable" and resp.headers["X-RAG-Mode"] == "unavailable"
    prom = prometheus_series(await (await client.get("/metrics")).text())
    counted = {dict(k)["mode"]: v for k, v in prom["rag.request.count"].items() if dict(k)["route"] == "/v1/query"}
    assert counted == {"unavailable": 1}
    [series] = [dict(k) for k in prom["rag.request.count"] if dict(k)["route"] == "/v1/query"]
    assert series["status"] == "503" and series["degraded"] == "true"


def test_a_value_emitted_but_undeclared_is_caught():
    """The suite-wide check (tests/conftest.py) sees every series whose tag value the catalogue does not
    declare: here a mode nobody declared and a degradation reason outside the vocabulary."""
    from gateway.telemetry.core import UNDECLARED_SEEN

    t = Telemetry(None, flush_interval_s=0)
    seen = len(UNDECLARED_SEEN)
    t.request_started("/v1/query")
    t.request_finished("/v1/query", 200, "retrieval_onyl", False, 1.0)
    t.degradation("vector_db", "gremlins")
    t.degradation("vector_db", "timeout")
    t.flush()
    caught = UNDECLARED_SEEN[seen:]
    del UNDECLARED_SEEN[seen:]  # caught on purpose: not this test's failure
    assert sorted(caught) == ["degradation.count{reason:gremlins}", "request.count{mode:retrieval_onyl}",
                              "request.duration{mode:retrieval_onyl}"]
    assert t.undeclared == set(caught)


def test_prometheus_names_are_in_base_units_with_total_counters():
    """Prometheus naming rules: durations in seconds (``_seconds``, ``le`` bounds in seconds, sums in
    seconds), counters ``_total``; DogStatsD keeps ms (what the dashboard and monitors read)."""
    t = Telemetry(None, flush_interval_s=0)
    t.request_started("/v1/query")
    t.request_finished("/v1/query", 200, "full", False, 250.0)  # ms
    t.on_attempt("embedder", "success", 0.004)  # seconds
    families = {f.name: f for f in text_string_to_metric_families(t.prometheus_text().decode())}
    assert "rag_request_duration_seconds" in families and "rag_request_duration_ms" not in families
    for name, fam in families.items():
        spec = next(s for s in CATALOGUE if s.prometheus_name() == name)
        assert not name.endswith("_ms")
        if spec.unit in ("ms", "seconds"):
            assert name.endswith("_seconds"), name
        if spec.type == "count":
            assert fam.type == "counter" and all(s.name == name + "_total" for s in fam.samples
                                                 if not s.name.endswith("_created")), name
    samples = {(s.name, s.labels.get("le")): s.value for s in families["rag_request_duration_seconds"].samples}
    assert samples[("rag_request_duration_seconds_sum", None)] == pytest.approx(0.25)
    assert samples[("rag_request_duration_seconds_bucket", "0.1")] == 0
    assert samples[("rag_request_duration_seconds_bucket", "0.25")] == 1
    dep = {(s.name, s.labels.get("le")): s.value for s in families["rag_dependency_duration_seconds"].samples}
    assert dep[("rag_dependency_duration_seconds_sum", None)] == pytest.approx(0.004)
    assert dep[("rag_dependency_duration_seconds_bucket", "0.005")] == 1


def test_breaker_open_for_keeps_counting_through_half_open_probes():
    """A hanging dependency: open → half_open (a probe) → open … The state gauge dips to 1 at every
    probe; ``breaker.open_for`` counts from the first departure from closed until it closes."""
    t = Telemetry(None, flush_interval_s=0)
    t.track_dependencies(["vector_db"])

    def open_for() -> float:
        return prometheus_series(t.prometheus_text().decode())["rag.breaker.open_for"][(("dependency", "vector_db"),)]

    assert open_for() == 0
    t.on_state_change("vector_db", "closed", "open")
    first = open_for()
    for _ in range(3):
        t.on_state_change("vector_db", "open", "half_open")
        t.on_state_change("vector_db", "half_open", "open")
    time.sleep(0.01)  # the gauge is a clock reading, not an event count: let the clock move
    assert open_for() > first
    t.on_state_change("vector_db", "open", "half_open")
    t.on_state_change("vector_db", "half_open", "closed")
    assert open_for() == 0


async def test_retrieval_quality_comes_from_the_active_versions_golden_set_evaluation(gateway_factory, data_dir):
    """`kb.retrieval_quality{measure}` = the last golden-set evaluation stored in the active version's
    manifest (``evaluation``, as `rag-sidecar eval --json` reports it); absent for a never-evaluated KB."""
    import json as _json

    [manifest] = list((data_dir / "kb" / "versions").glob("*/manifest.json"))
    data = _json.loads(manifest.read_text())
    data["evaluation"] = {"golden_set": "corpus/golden.jsonl", "queries": 40,
                          "normal": {"precision@5": 0.62, "recall@5": 0.8, "ndcg@10": 0.71, "mrr": 0.75}}
    manifest.write_text(_json.dumps(data))
    client = await gateway_factory(make_settings(data_dir))
    prom = prometheus_series(await (await client.get("/metrics")).text())
    assert prom["rag.kb.retrieval_quality"] == {
        (("measure", "precision_at_5"),): 0.62, (("measure", "recall_at_5"),): 0.8,
        (("measure", "ndcg_at_10"),): 0.71, (("measure", "mrr"),): 0.75}
    t = state_of(client).telemetry
    t.kb_state("v2", 10, 1.0, evaluation=None)  # a version never evaluated: no stale figure survives
    assert "rag.kb.retrieval_quality" not in prometheus_series(t.prometheus_text().decode())
