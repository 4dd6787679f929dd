"""The benchmark runner end to end in its tiniest mode: it runs, stops by itself, and writes the report.

Checks structure only (keys, tables, files) — never performance numbers, which depend on the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_quick_overhead_run_writes_markdown_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # The Python load generator: its 0.1 s slices always carry requests, where wrk (a process started per
    # slice and stopped with SIGINT) can be stopped before its connections are up on a busy machine (seen
    # once in CI: a point with 0 requests). wrk's own path is tested in tests/test_bench_wrk.py.
    env = {**os.environ, "RAG_BENCH_LOADGEN": "python"}
    res = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "overhead", "--duration", "0.2",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=55, env=env)
    assert res.returncode == 0, res.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    machine = results["meta"]["machine"]
    assert {"cpu_model", "logical_cores", "python", "packages", "date_utc"} <= set(machine)
    assert results["meta"]["quick"] is True
    harness = results["meta"]["harness"]  # which load generator drove the points
    assert harness["loadgen_points"] == {"python": 3 * 2 * 2 * 2}  # 2 endpoints x 3 c x 2 sides x 2 slices

    overhead = results["sections"]["overhead"]
    for endpoint in ("query", "messages"):
        rows = overhead[endpoint]
        assert [r["concurrency"] for r in rows] == [1, 4, 32]
        for row in rows:
            for side in ("floor", "gateway"):
                point = row[side]
                assert point["requests"] > 0 and point["status"] == {"200": point["requests"]}
                assert {"rps", "p50_ms", "p99_ms", "cpu_ms_per_req"} <= set(point)
            assert {"throughput_ratio", "added_p50_ms", "added_p99_ms"} <= set(row)
        assert all(r["gateway"]["modes"] == {"full": r["gateway"]["requests"]} for r in overhead["query"])

    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == 10
    assert all(t["result"] in ("PASS", "MISS", "NOT RUN") for t in targets.values())
    throughput = next(t for name, t in targets.items() if name.startswith("Gateway throughput"))
    assert throughput["result"] in ("PASS", "MISS") and throughput["measured"] is not None

    md = (out / "latest.md").read_text()
    assert "## Targets" in md and "## 1. Gateway overhead" in md and "Absolute figures vary" in md
    assert "**Load generator**" in md
    assert (out / "overhead.png").stat().st_size > 0
    assert "| target |" in res.stdout  # the target table also goes to stdout


def test_unknown_section_is_a_usage_error() -> None:
    res = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "unknown section" in res.stderr
