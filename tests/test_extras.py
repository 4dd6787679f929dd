"""Optional dependencies: serving imports none of them, and a tool that needs one says which extra to install."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chaos.cli import main as chaos_main
from chaos.report import plot_timeline
from gateway.extras import MissingExtra, require

# (psutil is left out: a dependency imports it opportunistically when it is installed)
OPTIONAL = ("matplotlib", "grpc_health", "bm25s", "rank_bm25")


def test_serving_imports_no_optional_dependency(tmp_path):
    """The entry point with every command registered, the app and its routes: no extra is loaded."""
    code = ("import sys; from rag_sidecar.cli import _commands; from gateway.cli import build_parser; "
            "build_parser(*_commands()); from gateway.app import create_app; from gateway.config import Settings; "
            f"create_app(Settings(), configure_logging=False); import json; "
            f"print(json.dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"RAG_SIDECAR__SERVER__DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_a_missing_extra_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without [chaos] looks like
    with pytest.raises(MissingExtra, match=r"pip install 'rag-sidecar\[chaos\]'"):
        require("matplotlib", extra="chaos", purpose="timeline.png")
    with pytest.raises(MissingExtra, match="timeline"):
        plot_timeline({"samples": []}, tmp_path / "t.png")
    # `chaos run` refuses before the drill starts, and says how to go on without the PNG
    assert chaos_main(["run", "embedder_down", "--target", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "rag-sidecar[chaos]" in err and "--no-png" in err
