"""The drill machinery: scenario validation, gateway-side fault injection, the runner's guarantees
(rollbacks on interruption, a skipped method when the steady state does not hold), outputs and CLI."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from chaos.cli import main as chaos_main
from chaos.cli import register
from chaos.drill import Drill, DrillTarget, percentile
from chaos.scenario import ScenarioError, all_scenarios, load_scenario, parse_scenario
from gateway.upstreams.faultinject import FaultRegistry, FaultSpec
from resilience import UpstreamError
from tests.chaos.conftest import StackThread
from tests.conftest import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL: dict[str, Any] = {
    "title": "t", "target": "vector_db",
    "steady-state-hypothesis": {"probes": [{"name": "ok", "type": "availability", "tolerance": {"min": 0.99}}]},
    "method": [{"at_s": 0, "action": "stub_fault", "target": "vector_db", "duration_s": 1,
                "attributes": {"status": 503}}],
    "load": {"rate_per_s": 5, "max_requests": 10, "queries": ["json"]},
}


def scenario_data(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(MINIMAL))
    data.update(changes)
    return data


# ---- scenarios -----------------------------------------------------------------------------------
def test_shipped_scenarios_validate() -> None:
    paths = all_scenarios()
    assert len(paths) >= 12
    for path in paths:
        sc = load_scenario(path, {"open_s": 2})
        assert sc.id == path.stem and sc.queries_list()
        assert sc.total_s < 60, f"{sc.id}: keep drills short"


@pytest.mark.parametrize("change,field", [
    ({"steady-state-hypothesis": {"probes": [{"name": "p", "type": "latency_p99", "tolerance": {}}]}},
     "steady-state-hypothesis.probes.0: Value error, tolerance.max is required"),
    ({"method": [{"action": "toxic_add", "target": "vector_db", "attributes": {"type": "nope"}}]},
     "method.0: Value error, attributes.type must be one of"),
    ({"method": [{"action": "stub_fault", "target": "llm", "attributes": {"stauts": 529}}]},
     "method.0: Value error, unknown stand-in fault field(s) ['stauts']"),
    ({"method": [{"action": "explode", "target": "llm"}]}, "method.0.action: Input should be"),
    ({"target": "database"}, "target: Value error, unknown dependency ['database']"),
    ({"load": {"rate_per_s": 5, "max_requests": 10}}, "load: Value error, load needs queries"),
    ({"surprise": 1}, "surprise: unknown field"),
])
def test_invalid_scenarios_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario_data(**change), source="s.yaml")
    assert str(exc.value).startswith("s.yaml: ") and field in str(exc.value)


def test_variables_are_substituted_and_arithmetic_is_evaluated() -> None:
    data = scenario_data(configuration={"timeout_ms": 1500})
    data["steady-state-hypothesis"]["probes"].append(
        {"name": "p99", "type": "latency_p99", "tolerance": {"max": "${timeout_ms} + 50"}})
    assert parse_scenario(data).steady_state_hypothesis.probes[1].tolerance.max == 1550
    assert parse_scenario(data, variables={"timeout_ms": 500}).steady_state_hypothesis.probes[1].tolerance.max == 550
    data["steady-state-hypothesis"]["probes"][1]["tolerance"]["max"] = "${missing}"
    with pytest.raises(ScenarioError, match=r"steady-state-hypothesis.probes.1.tolerance.max: unknown variable"):
        parse_scenario(data)


def test_fault_windows_merge_overlapping_faults() -> None:
    data = scenario_data(method=[
        {"at_s": 0, "action": "stub_fault", "target": "vector_db", "duration_s": 3, "attributes": {"status": 503}},
        {"at_s": 2, "action": "stub_fault", "target": "llm", "duration_s": 3, "attributes": {"status": 529}},
        {"at_s": 7, "action": "breaker_open", "target": "llm", "duration_s": 1}])
    sc = parse_scenario(data)
    assert sc.fault_windows() == [(0, 5), (7, 8)] and sc.method_duration_s == 8


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 99) is None


# ---- gateway-side fault injection --------------------------------------------------------------
async def test_fault_registry_aborts_delays_and_hangs_until_cleared() -> None:
    registry = FaultRegistry(seed=1)
    await registry.inject("vector_db")  # nothing set: a no-op
    registry.set("vector_db", FaultSpec.model_validate({"abort": {"http_status": 429, "retry_after_s": 2}}))
    with pytest.raises(UpstreamError) as exc:
        await registry.inject("vector_db")
    assert exc.value.status == 429 and exc.value.retry_after_s == 2 and exc.value.retryable

    registry.set("llm", FaultSpec.model_validate({"delay": {"fixed_delay_s": 0.05}, "models": ["big"]}))
    t0 = time.perf_counter()
    await registry.inject("llm", "small")
    assert time.perf_counter() - t0 < 0.03  # another model: untouched
    await registry.inject("llm", "big")
    assert time.perf_counter() - t0 >= 0.05

    registry.set("embedder", FaultSpec.model_validate({"hang": {}}))
    hung = asyncio.create_task(registry.inject("embedder"))
    await asyncio.sleep(0.05)
    assert not hung.done()
    registry.clear("embedder")
    await asyncio.wait_for(hung, 1)
    assert registry.describe("vector_db")["counts"] == {"calls": 1, "delayed": 0, "hung": 0, "aborted": 1}


async def test_fault_spec_expires_and_percentages_are_drawn() -> None:
    now = [0.0]
    registry = FaultRegistry(seed=3, clock=lambda: now[0], max_duration_s=10)
    registry.set("vector_db", FaultSpec.model_validate({"abort": {"percentage": 30}, "duration_s": 60}))
    assert registry.describe("vector_db")["expires_in_s"] == 10  # capped
    aborted = 0
    for _ in range(1000):
        try:
            await registry.inject("vector_db")
        except UpstreamError:
            aborted += 1
    assert 230 < aborted < 370
    now[0] = 10.0
    assert registry.get("vector_db") is None
    with pytest.raises(ValueError, match="at least one of delay, abort, hang"):
        FaultSpec.model_validate({})


async def test_admin_fault_injection_degrades_and_is_off_by_default(gateway_factory, data_dir: Path) -> None:
    headers = {"Authorization": "Bearer adm1n-chaos"}
    off = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "adm1n-chaos"}))
    assert (await (await off.get("/admin/faults", headers=headers)).json()) == {"enabled": False, "faults": {}}
    resp = await off.put("/admin/faults/vector_db", json={"abort": {}}, headers=headers)
    assert resp.status == 403
    await off.close()

    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "adm1n-chaos",
                                                             "chaos.allow_fault_injection": True}))
    assert (await client.put("/admin/faults/vector_db", json={"abort": {}})).status == 401
    assert (await client.put("/admin/faults/nope", json={"abort": {}}, headers=headers)).status == 404
    bad = await client.put("/admin/faults/vector_db", json={"abort": {"percentage": 200}}, headers=headers)
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "abort.percentage"
    resp = await client.put("/admin/faults/vector_db", json={"abort": {"http_status": 503}}, headers=headers)
    assert resp.status == 200 and (await resp.json())["active"] is True

    body = await (await client.post("/v1/query", json={"query": "green tea temperature"})).json()
    # No LLM configured: the answer is extractive either way; the retriever shows the fallback.
    assert body["degraded"] is True and {s["retriever"] for s in body["sources"]} == {"bm25"}
    assert body["degradations"][0] == {"component": "vector_db", "reason": "error"}
    shown = await (await client.get("/admin/faults", headers=headers)).json()
    assert shown["faults"]["vector_db"]["counts"]["aborted"] >= 1

    assert (await client.delete("/admin/faults/vector_db", headers=headers)).status == 200
    for name in ("vector_db", "embedder"):
        await client.post(f"/admin/breakers/{name}/reset", headers=headers)
    body = await (await client.post("/v1/query", json={"query": "green tea temperature"})).json()
    assert body["degraded"] is False and {s["retriever"] for s in body["sources"]} == {"hybrid"}


# ---- the runner ----------------------------------------------------------------------------------
LONG_FAULTS = {
    "title": "long faults, to be interrupted", "target": ["vector_db", "llm"],
    "steady-state-hypothesis": {"before_s": 1, "after_s": 1, "probes": [
        {"name": "no 5xx", "type": "availability", "tolerance": {"min": 0.99}}]},
    "method": [
        {"at_s": 0, "action": "toxic_add", "target": "vector_db", "duration_s": 60,
         "attributes": {"name": "long_latency", "type": "latency", "attributes": {"latency": 50}}},
        {"at_s": 0, "action": "stub_fault", "target": "llm", "duration_s": 60, "attributes": {"status": 529}},
        {"at_s": 0, "action": "gateway_fault", "target": "embedder", "duration_s": 60,
         "attributes": {"delay": {"fixed_delay_s": 0.01}}}],
    "load": {"rate_per_s": 4, "max_requests": 1000, "queries": ["json dumps indent", "csv reader"]},
}


async def _faults_left(stack: StackThread) -> dict[str, Any]:
    t = stack.target()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{t.toxiproxy}/proxies/weaviate_grpc/toxics") as r:
            toxics = await r.json()
        async with s.get(f"{t.stubs['llm']}/__faults__") as r:
            llm = await r.json()
        async with s.get(f"{t.url}/admin/faults", headers={"Authorization": f"Bearer {t.admin_token}"}) as r:
            gateway = await r.json()
    return {"toxics": toxics, "llm_status": llm["status"],
            "gateway": [d for d, f in gateway["faults"].items() if f["active"]]}


async def _wait_applied(drill: Drill, n: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(e["kind"] == "apply" for e in drill.run_log) < n:
        assert time.monotonic() < deadline, drill.run_log
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_cancelled_drill_rolls_back_and_writes_an_aborted_journal(chaos_stack: StackThread,
                                                                      tmp_path: Path) -> None:
    await chaos_stack.reset()
    drill = Drill(parse_scenario(LONG_FAULTS, scenario_id="long"), chaos_stack.target(), out_dir=tmp_path)
    task = asyncio.create_task(drill.run())
    await _wait_applied(drill, 3)
    applied = await _faults_left(chaos_stack)
    assert applied["toxics"] and applied["llm_status"] == 529 and applied["gateway"] == ["embedder"]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await _faults_left(chaos_stack) == {"toxics": [], "llm_status": None, "gateway": []}
    journal = json.loads((tmp_path / "journal.json").read_text())
    assert journal["status"] == "aborted" and journal["verdict"] == "aborted"
    assert [e["status"] for e in journal["rollbacks"]] == ["succeeded"] * 3
    assert (tmp_path / "report.md").read_text().startswith("# Drill: long faults, to be interrupted — ABORTED")
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


@pytest.mark.timeout(90)
async def test_sigint_to_a_drill_process_rolls_back(chaos_stack: StackThread, tmp_path: Path) -> None:
    await chaos_stack.reset()
    scenario = tmp_path / "long.yaml"
    scenario.write_text(yaml.safe_dump(LONG_FAULTS, allow_unicode=True))
    t = chaos_stack.target()
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "chaos.cli", "run", str(scenario), "--target", t.url, "--toxiproxy", t.toxiproxy,
            "--stub", f"llm={t.stubs['llm']}", "--stub", f"weaviate={t.stubs['vector_db']}", "--out", str(out),
            "--no-png"]
    env = {**os.environ, "RAG_SIDECAR__AUTH__ADMIN_TOKEN": t.admin_token or ""}
    proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while sum("undo" not in line and " t=" in line for line in seen) < 3:
                line = (await proc.stderr.readline()).decode()
                assert line, f"drill exited early: {seen}"
                seen.append(line)
        assert (await _faults_left(chaos_stack))["toxics"]
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest.decode()
    assert await _faults_left(chaos_stack) == {"toxics": [], "llm_status": None, "gateway": []}
    journal = json.loads((out / "journal.json").read_text())
    assert journal["status"] == "aborted"
    assert sorted(e["name"] for e in journal["rollbacks"]) == [
        "undo gateway_fault embedder", "undo stub_fault llm", "undo toxic_add vector_db"]
    assert all(e["status"] == "succeeded" for e in journal["rollbacks"])


@pytest.mark.timeout(30)
async def test_method_is_skipped_when_the_steady_state_does_not_hold_before(chaos_stack: StackThread) -> None:
    await chaos_stack.reset()
    data = scenario_data()
    data["steady-state-hypothesis"] = {"before_s": 1, "probes": [
        {"name": "impossible", "type": "mode", "phases": ["before"], "tolerance": {"expect": ["unavailable"],
                                                                                  "min": 1.0}}]}
    journal = await Drill(parse_scenario(data, scenario_id="skip"), chaos_stack.target()).run()
    assert journal["status"] == "failed" and journal["verdict"] == "failed"
    assert "method skipped" in journal["error"] and journal["run"] == []
    assert journal["steady_states"]["during"] is None


# ---- CLI ---------------------------------------------------------------------------------------------
def test_register_adds_the_chaos_subcommands() -> None:
    parser = argparse.ArgumentParser(prog="rag-sidecar")
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["chaos", "run", "x.yaml", "--target", "http://g", "--stub", "llm=http://a",
                              "--out", "o"])
    assert args.chaos_cmd == "run" and args.scenarios == ["x.yaml"] and callable(args.func)
    assert parser.parse_args(["chaos", "proxy", "--port", "0"]).func.__name__ == "cmd_proxy"
    assert parser.parse_args(["chaos", "list"]).func.__name__ == "cmd_list"


def test_list_validates_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "vector_db_blackhole" in out and "INVALID" not in out


def test_run_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos_main(["run", "vector_db_blackhole"]) == 2
    assert "--target URL" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_safeguard_stops_the_fault_when_availability_collapses(gateway_factory, data_dir: Path) -> None:
    """No keyword index and the vector DB aborting: every answer is a 503. The safeguard (availability
    below 50 % over 3 s) undoes the 30 s fault after a few seconds and the journal says so."""
    client = await gateway_factory(make_settings(data_dir, **{
        "auth.admin_token": "adm1n-chaos", "chaos.allow_fault_injection": True, "fallback.keyword_index": False}))
    data = {
        "title": "a broken build", "target": "vector_db",
        "steady-state-hypothesis": {"before_s": 1, "after_s": 1, "probes": [
            {"name": "no 5xx", "type": "availability", "tolerance": {"min": 0.99}}]},
        "method": [{"at_s": 0, "action": "gateway_fault", "target": "vector_db", "duration_s": 30,
                    "attributes": {"abort": {"http_status": 503}}}],
        "safeguard": {"availability_min": 0.5, "window_s": 3, "min_requests": 5},
        "load": {"rate_per_s": 10, "max_requests": 1000, "queries": ["green tea temperature"]},
    }
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a fake Datadog Agent: drill events land here
    agent.bind(("127.0.0.1", 0))
    agent.settimeout(2)
    target = DrillTarget(url=str(client.make_url("")).rstrip("/"), admin_token="adm1n-chaos",
                         dogstatsd=f"udp://127.0.0.1:{agent.getsockname()[1]}")
    started = time.monotonic()
    journal = await Drill(parse_scenario(data), target, out_dir=None, png=False).run()
    try:
        received = [agent.recv(65535).decode() for _ in range(2)]
    finally:
        agent.close()
    assert received[0].startswith("_e{") and "Chaos drill started: a broken build" in received[0]
    assert "|#source:rag-sidecar-drill,scenario:" in received[0]
    assert "Chaos drill ended: a broken build" in received[1] and "verdict:aborted" in received[1]
    assert "|t:error" in received[1]
    assert journal["status"] == "aborted" and journal["verdict"] == "aborted"
    guard = journal["aborted_by_safeguard"]
    assert guard is not None and guard["availability"] < 0.5 and guard["floor"] == 0.5
    assert guard["at_s"] < 1 + 10, "the fault ran on although the steady state was lost"
    assert time.monotonic() - started < 20
    undone = [e for e in journal["rollbacks"] if e["name"].startswith("undo")]
    assert undone and all(e["status"] == "succeeded" for e in undone)
    faults = await (await client.get("/admin/faults", headers={"Authorization": "Bearer adm1n-chaos"})).json()
    assert not any(f["active"] for f in faults["faults"].values())
