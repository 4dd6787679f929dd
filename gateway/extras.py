"""Optional dependencies: serving needs none of them; the error says which extra to install.

    pip install 'rag-sidecar[chaos]'   # chaos report PNGs (matplotlib), the Weaviate stand-in (grpcio-health-checking)
    pip install 'rag-sidecar[bench]'   # python -m bench (psutil, bm25s, rank-bm25, matplotlib)
    pip install 'rag-sidecar[test]'    # both, plus the test, lint and type-check tools (what `make install` does)
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` saying that ``purpose`` needs ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: "
                           f"pip install 'rag-sidecar[{extra}]'") from exc
