"""The backend Protocols cover what the gateway calls, and only the factory knows backends by name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.upstreams.base import IngestTarget, VectorStore
from gateway.upstreams.embedded_store import EmbeddedStore
from gateway.upstreams.factory import build_store, serves_kb_versions
from gateway.upstreams.weaviate import WeaviateStore

ROOT = Path(__file__).resolve().parent.parent
FACTORY = {"gateway/upstreams/factory.py", "gateway/config.py"}


def test_both_stores_implement_the_protocols():
    embedded, weaviate = EmbeddedStore(), WeaviateStore(Settings().vector_store)
    assert isinstance(embedded, VectorStore) and isinstance(weaviate, VectorStore)
    assert isinstance(weaviate, IngestTarget) and not isinstance(embedded, IngestTarget)
    assert (embedded.serves_kb_versions, weaviate.serves_kb_versions) == (True, False)


@pytest.mark.parametrize("backend", ["embedded", "weaviate"])
def test_the_factory_answers_for_the_store_it_builds(backend):
    settings = Settings.model_validate({"vector_store": {"backend": backend}})
    assert serves_kb_versions(settings) is build_store(settings).serves_kb_versions


def _backend_branches(sources: list[Path], root: Path) -> list[str]:
    """``<...vector_store|embedder|llm...>.backend == "name"`` comparisons outside the factory."""
    found = []
    for path in sources:
        rel = path.relative_to(root).as_posix()
        if rel in FACTORY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            for side in (node.left, *node.comparators):
                text = ast.unparse(side)
                if (isinstance(side, ast.Attribute) and side.attr in ("backend", "effective_backend")
                        and any(dep in text for dep in ("vector_store", "embedder", "llm"))
                        and any(isinstance(c, ast.Constant) for c in (node.left, *node.comparators))):
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_branching_on_backend_names_outside_the_factory(tmp_path):
    sources = sorted(p for d in ("gateway", "chaos", "fallback", "resilience") for p in (ROOT / d).rglob("*.py"))
    assert _backend_branches(sources, ROOT) == []
    bad = tmp_path / "bad.py"
    bad.write_text('if settings.vector_store.backend != "embedded":\n    pass\n')
    assert _backend_branches([bad], tmp_path) == ['bad.py:1: settings.vector_store.backend != \'embedded\'']
