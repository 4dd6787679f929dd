"""`rag-sidecar jobs submit|status|results` in a subprocess against a gateway on a real socket: progress,
resume after an interruption without submitting a batch twice, results in input order."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys

from tests.conftest import make_settings


async def cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "jobs", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode(), err.decode()


async def test_submit_resume_status_results(gateway_factory, data_dir, tmp_path):
    client = await gateway_factory(make_settings(data_dir, **{"jobs.concurrency": 4}))
    url = str(client.make_url("/")).rstrip("/")
    topics = ["green tea temperature", "Mauna Loa volcano", "circuit breaker half-open"]
    source = tmp_path / "batch.jsonl"
    source.write_text("\n".join(json.dumps({"query": f"{topics[i % 3]} {i}", "top_k": 1}) for i in range(25)) + "\n")

    code, out, err = await cli("submit", str(source), "--url", url, "--batch-size", "10")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["queries"] == 25 and summary["done"] == 25 and len(summary["jobs"]) == 3
    assert "queries: 25/25 (100%)" in err
    state_file = tmp_path / "batch.jsonl.jobs.json"
    state = json.loads(state_file.read_text())
    assert [j["batch"] for j in state["jobs"]] == [0, 1, 2]

    # Interrupted after the last POST but before its job id was saved: the resume sends the batch again
    # with the same Idempotency-Key and gets the same job back, not a second one.
    state["jobs"].pop()
    state_file.write_text(json.dumps(state))
    code, out, err = await cli("submit", str(source), "--url", url, "--batch-size", "10")
    assert code == 0, err
    assert "resuming: 2 of 3 batches" in err
    assert json.loads(out)["jobs"] == summary["jobs"]
    with sqlite3.connect(data_dir / "jobs" / "jobs.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3

    code, out, err = await cli("results", str(source), "--url", url, "--page-size", "4")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in lines] == list(range(25))
    expected = ["tea.md", "volcanoes.html", "breakers.md"]
    assert all(r["status"] == "done" and r["result"]["sources"][0]["source"] == expected[r["line"] % 3]
               for r in lines)

    code, out, _ = await cli("status", summary["jobs"][0], "--url", url)
    assert code == 0 and json.loads(out)["progress"]["done"] == 10

    source.write_text('{"query": "changed"}\n')
    code, _, err = await cli("submit", str(source), "--url", url)
    assert code == 2 and "changed since it was submitted" in err and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "ok"}\n{oops\n')
    code, _, err = await cli("submit", str(bad), "--url", url)
    assert code == 2 and "bad.jsonl:2" in err
