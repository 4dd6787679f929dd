"""How a KB version is searched: which retrievers it supports, and whether its vectors fit the embedder.

Vectors record the model that made them (``manifest["embedder"]["name"]``). Query vectors from another
model live in a different space: cosine scores against them are noise that looks like an answer. So a
version embedded by another model is refused (the gateway stays on what it had, or stays not ready,
with the reason on /readyz and /health), never silently mixed.
"""
from __future__ import annotations

from typing import Any

from gateway.kb import KBError, embedder_id


class ModelMismatch(KBError):
    """A KB version's vectors were made by another embedder than the one configured."""


def check_vectors_model(version: str, manifest: dict[str, Any], embedder: Any) -> None:
    """Raise :class:`ModelMismatch` unless ``version``'s vectors were made by ``embedder``'s model."""
    made_by = (manifest.get("embedder") or {}).get("name")
    want = embedder_id(embedder)
    if made_by == want:
        return
    if made_by is None:
        raise ModelMismatch(f"KB version {version} has no vectors (ingested with embedder.backend none); this "
                            f"gateway embeds queries with {want}: re-ingest it, or set embedder.backend: none "
                            "to serve it keyword-only")
    raise ModelMismatch(f"KB version {version} was embedded by {made_by}; this gateway embeds queries with "
                        f"{want}: vectors of two models are not comparable — re-ingest it with this embedder "
                        "or configure the embedder it was built with")


def retrieval_mode(settings: Any, embedder: Any) -> str:
    """``keyword_only`` (no embedder in front of the embedded store), ``hybrid`` or ``vector``."""
    if embedder is None and settings.vector_store.backend == "embedded":
        return "keyword_only"
    if settings.retrieval.hybrid and settings.vector_store.backend == "embedded":
        return "hybrid"
    return "vector"


def check_version_servable(kb_store: Any, version: str, settings: Any, embedder: Any) -> None:
    """Before ACTIVE moves: raise :class:`ModelMismatch` if this gateway could not search ``version``."""
    if settings.vector_store.backend != "embedded" or embedder is None:
        return
    import json

    try:
        manifest = json.loads((kb_store.versions_dir / version / "manifest.json").read_text())
    except (OSError, ValueError):
        return  # unknown or unreadable: activate() reports it
    check_vectors_model(version, manifest, embedder)
