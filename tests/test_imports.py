"""The import graph: no cycles between files, and the layers point one way.

    rag_sidecar (the CLI composing both) ─► chaos, bench ─► gateway ─► resilience, fallback

Every import counts — module level, inside functions and under ``if TYPE_CHECKING`` — as import-linter
counts them by default: a lazy or type-only import back up the stack is still a cycle a reader has to
untangle. A back reference needed for typing is a small Protocol in the lower module instead.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag_sidecar", "chaos", "bench", "gateway", "resilience", "fallback")
# What each package must never import (directly or lazily).
FORBIDDEN = {
    "resilience": {"gateway", "chaos", "bench", "rag_sidecar", "fallback"},
    "fallback": {"gateway", "chaos", "bench", "rag_sidecar"},  # may use resilience (its Redis helpers)
    "gateway": {"chaos", "bench", "rag_sidecar"},
    "chaos": {"bench", "rag_sidecar"},
}


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports (``from pkg import sub`` is an edge to ``pkg.sub``)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        edges: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges.add(full if full in mods else resolve(base))
        graph[mod] = {e for e in edges if e is not None and e != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{mod} imports {dep}" for mod, deps in sorted(graph.items()) for dep in sorted(deps)
            if dep.split(".")[0] in FORBIDDEN.get(mod.split(".")[0], ())]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_point_one_way():
    assert layer_violations(import_graph()) == []


def test_the_checks_see_lazy_and_type_only_imports(tmp_path):
    """The checks catch what they are for: a TYPE_CHECKING cycle, a lazy upward import."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "resilience" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from resilience.b import B\n")
    (tmp_path / "resilience" / "b.py").write_text("from . import a\n")
    (tmp_path / "fallback" / "c.py").write_text("def f():\n    from gateway.app import create_app\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["resilience.a", "resilience.b"]]
    assert layer_violations(graph) == ["fallback.c imports gateway"]
