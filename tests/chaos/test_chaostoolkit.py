"""Chaos Toolkit as users run it: every shipped scenario exports to an experiment `chaos validate`
accepts, and one runs under `chaos run` against the local stack (offline, loopback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.scenario import all_scenarios, load_scenario
from chaosragsidecar.export import to_experiment
from tests.chaos.conftest import StackThread

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
CHAOS = str(Path(sys.executable).parent / "chaos")
REPO = Path(__file__).resolve().parents[2]
# The extension is importable from the repository (as after `pip install -e .`), also in `chaos`'s process.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_every_shipped_scenario_exports_to_a_valid_experiment(tmp_path: Path) -> None:
    from chaoslib.experiment import ensure_experiment_is_valid

    for path in all_scenarios():
        experiment = to_experiment(load_scenario(path))
        ensure_experiment_is_valid(json.loads(json.dumps(experiment)))  # also checks the python functions' arguments
    # and once through the CLI users type, on the file `rag-sidecar chaos export` writes
    out = subprocess.run([sys.executable, "-m", "rag_sidecar.cli", "chaos", "export", "vector_db_blackhole",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr
    done = subprocess.run([CHAOS, "--no-version-check", "--no-log-file", "validate",
                           str(tmp_path / "vector_db_blackhole.json")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr


def test_chaos_run_executes_a_drill_and_reports_its_verdict(chaos_stack: StackThread, tmp_path: Path) -> None:
    import asyncio

    asyncio.run(chaos_stack.reset())
    experiment = tmp_path / "experiment.json"
    experiment.write_text(json.dumps(to_experiment(load_scenario("vector_db_blackhole", chaos_stack.variables()))))
    t = chaos_stack.target()
    env = {**ENV, "RAG_SIDECAR_URL": t.url, "TOXIPROXY_URL": t.toxiproxy or "",
           "RAG_SIDECAR_STUBS": ",".join(f"{k}={v}" for k, v in t.stubs.items()),
           "RAG_SIDECAR_ADMIN_TOKEN": t.admin_token or "", "RAG_SIDECAR_JOURNAL_DIR": str(tmp_path / "drills")}
    done = subprocess.run([CHAOS, "--no-version-check", "--no-log-file", "run", "--journal-path",
                           str(tmp_path / "ctk-journal.json"), str(experiment)],
                          capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env)
    journal = json.loads((tmp_path / "ctk-journal.json").read_text())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert journal["status"] == "completed" and journal["deviated"] is False
    [run] = journal["run"]
    assert run["status"] == "succeeded" and run["output"]["verdict"] == "pass", run
    assert (tmp_path / "drills" / "vector_db_blackhole" / "journal.json").exists()
    assert journal["steady_states"]["after"]["steady_state_met"] is True
