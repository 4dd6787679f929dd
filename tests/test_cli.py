"""The CLI as an operator runs it: ingest → kb list → query → rollback, in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import TINY_CORPUS


def run(args, data_dir, **env):
    full_env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data_dir),
                "RAG_SIDECAR__LOGGING__LEVEL": "WARNING", "RAG_SIDECAR__KB__CHUNK_CHARS": "400",
                "RAG_SIDECAR__KB__CHUNK_OVERLAP": "80", **env}
    full_env.pop("ANTHROPIC_API_KEY", None)
    full_env.pop("RAG_SIDECAR_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_ingest_list_query_rollback(tmp_path):
    data = tmp_path / "data"
    first = run(["ingest", str(TINY_CORPUS), "--label", "first"], data)
    assert first.returncode == 0, first.stderr
    v1 = json.loads(first.stdout)
    assert v1["activated"] and v1["chunks"] > 3 and v1["documents"] == 3
    assert "embed:" in first.stderr and "100%" in first.stderr  # progress is shown

    second = run(["ingest", str(TINY_CORPUS), "--label", "second"], data)
    v2 = json.loads(second.stdout)
    assert v2["reused_vectors"] == v2["chunks"]  # nothing changed: every vector came from the cache

    listing = run(["kb", "list"], data).stdout
    assert f"* {v2['version']}" in listing and v1["version"] in listing

    answer = run(["query", "--json", "how long should green tea steep"], data)
    assert answer.returncode == 0, answer.stderr
    out = json.loads(answer.stdout)
    assert out["sources"][0]["source"] == "tea.md" and out["kb_version"] == v2["version"]

    back = run(["kb", "rollback"], data)
    assert json.loads(back.stdout)["version"] == v1["version"]
    assert f"* {v1['version']}" in run(["kb", "list"], data).stdout


def test_operator_mistakes_get_clear_errors(tmp_path):
    data = tmp_path / "data"
    missing = run(["ingest", str(tmp_path / "nope")], data)
    assert missing.returncode == 2 and "no such path" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "image.png").write_bytes(b"\x89PNG")
    nothing = run(["ingest", str(empty)], data)
    assert nothing.returncode == 1 and "nothing to ingest" in nothing.stderr and "Traceback" not in nothing.stderr
    bad = run(["kb", "activate", "v-does-not-exist"], data)
    assert bad.returncode == 1 and "unknown KB version" in bad.stderr
    assert run(["kb", "rollback"], data).returncode == 1


def test_query_without_a_kb_fails_fast_instead_of_hanging(tmp_path):
    out = run(["query", "json"], tmp_path / "empty", RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE="false")
    assert out.returncode == 1 and "did not become ready" in out.stderr and "Traceback" not in out.stderr


def test_query_against_an_unreachable_gateway_is_a_clear_error(tmp_path):
    out = run(["query", "--url", "http://127.0.0.1:1", "json"], tmp_path)
    assert out.returncode == 1 and "cannot reach the gateway" in out.stderr and "Traceback" not in out.stderr


def test_rag_sidecar_composes_the_gateway_and_chaos_commands(tmp_path):
    """`rag-sidecar` (rag_sidecar.cli) = the gateway's commands + chaos; `python -m gateway.cli` has no chaos."""
    from rag_sidecar.cli import main

    assert main(["chaos", "list"]) == 0
    env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "rag_sidecar", "config"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "config OK" in out.stderr, out.stderr
    gateway_only = run(["chaos", "list"], tmp_path)
    assert gateway_only.returncode == 2 and "invalid choice: 'chaos'" in gateway_only.stderr
