"""Quality gate: a new KB version is evaluated on a golden set before activation and refused on regression."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.kb import KnowledgeBase
from tests.conftest import TINY_CORPUS, make_settings, state_of

GOLDEN = [
    {"id": "g1", "query": "what water temperature for brewing green tea", "relevant": {"tea.md": 2}},
    {"id": "g2", "query": "steep cone volcano that erupts explosively", "relevant": {"volcanoes.html": 2}},
    {"id": "g3", "query": "trial calls after the open interval", "relevant": {"breakers.md": 2}},
    {"id": "g4", "query": "how long should green tea steep", "relevant": {"tea.md": 2}},
]


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in GOLDEN))
    return path


def _broken_corpus(tmp_path: Path) -> Path:
    """The tiny corpus with the tea page replaced by an unrelated one (a botched export)."""
    broken = tmp_path / "broken"
    shutil.copytree(TINY_CORPUS, broken, dirs_exist_ok=True)
    (broken / "tea.md").write_text("# Knitting\n\nCast on forty stitches and knit every row for a scarf.\n")
    return broken


def _ingest(monkeypatch: pytest.MonkeyPatch, data: Path, *argv: str) -> int:
    monkeypatch.setenv("RAG_SIDECAR__SERVER__DATA_DIR", str(data))
    monkeypatch.setenv("RAG_SIDECAR__TELEMETRY__STATSD_ENABLED", "false")
    return main(["ingest", *argv])


def test_the_gate_refuses_a_broken_version_and_keeps_the_old_one_active(monkeypatch, tmp_path, golden, capsys):
    data = tmp_path / "data"
    assert _ingest(monkeypatch, data, str(TINY_CORPUS), "--golden", str(golden)) == 0
    kb = KnowledgeBase(data / "kb")
    good = kb.active_version()
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["activated"] is True and first["evaluation"]["normal"]["mrr"] == 1.0

    assert _ingest(monkeypatch, data, str(_broken_corpus(tmp_path)), "--golden", str(golden)) == 1
    out = capsys.readouterr()
    assert "not activated" in out.err and "dropped" in out.err
    refused = json.loads(out.out.strip().splitlines()[-1])
    assert refused["activated"] is False and refused["evaluation"]["normal"]["mrr"] < 0.9
    assert kb.active_version() == good  # the old version still serves
    versions = {v["version"]: v for v in kb.list_versions()}
    assert versions[refused["version"]]["evaluation"]["normal"]["mrr"] == refused["evaluation"]["normal"]["mrr"]

    assert main(["kb", "list"]) == 0
    listing = capsys.readouterr().out
    assert "mrr=1.000" in listing and f"mrr={refused['evaluation']['normal']['mrr']:.3f}" in listing

    # Allowing the drop lets the same broken corpus through: the threshold is what refused it.
    assert _ingest(monkeypatch, data, str(_broken_corpus(tmp_path)), "--golden", str(golden),
                   "--max-mrr-drop", "1") == 0
    assert kb.active_version() != good


def test_min_mrr_refuses_a_first_version(monkeypatch, tmp_path, golden, capsys):
    data = tmp_path / "data"
    assert _ingest(monkeypatch, data, str(_broken_corpus(tmp_path)), "--golden", str(golden),
                   "--min-mrr", "0.95") == 1
    assert "below --min-mrr 0.950" in capsys.readouterr().err
    assert KnowledgeBase(data / "kb").active_version() is None


async def test_health_shows_the_active_versions_evaluation(gateway_factory, tmp_path, golden):
    from gateway.ingest import ingest

    settings = make_settings(tmp_path / "data", **{"kb.auto_ingest_sample": False})
    await ingest(settings, [TINY_CORPUS], golden=golden)
    client = await gateway_factory(settings)
    kb = (await (await client.get("/health")).json())["components"]["kb"]
    assert kb["version"] == state_of(client).kb.version
    assert kb["evaluation"]["golden"] == "golden.jsonl" and kb["evaluation"]["normal"]["mrr"] == 1.0
    assert set(kb["evaluation"]["keyword_fallback"]) == {"precision@5", "recall@5", "ndcg@10", "mrr"}
