"""How a KB version is searched: which retrievers it supports, and whether its vectors fit the embedder.

Vectors record the model that made them (``manifest["embedder"]["name"]``). Query vectors from another
model live in a different space: cosine scores against them are noise that looks like an answer. So a
version embedded by another model is refused (the gateway stays on what it had, or stays not ready,
with the reason on /readyz and /health), never silently mixed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.kb import KBError, embedder_id, is_fast_phase
from gateway.upstreams.factory import progressive_applies, serves_kb_versions

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.kb import KnowledgeBase
    from gateway.upstreams.base import Embedder


class ModelMismatch(KBError):
    """A KB version's vectors were made by another embedder than the one configured."""


def check_vectors_model(version: str, manifest: dict[str, Any], embedder: Embedder) -> None:
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


def fast_model_id() -> str:
    """The model id of progressive ingest's fast tier (what a fast-phase manifest must name)."""
    from gateway.upstreams.static_embedder import WordLlamaEmbedder

    return WordLlamaEmbedder.model_id


def check_fast_set(version: str, manifest: dict[str, Any], fast: Embedder | str | None) -> None:
    """Raise :class:`ModelMismatch` when a fast-phase version cannot be served by this process: progressive
    off here (``fast`` None), or its fast vectors made by another model than ``fast`` (an embedder or its id)."""
    if not is_fast_phase(manifest):
        return
    made_by = (manifest.get("fast_embedder") or {}).get("name")
    want = fast if isinstance(fast, str) or fast is None else embedder_id(fast)
    if want is None:
        raise ModelMismatch(f"KB version {version} holds fast-tier vectors only (its quality upgrade is pending; "
                            f"made by {made_by}): enable kb.progressive to serve and upgrade it, or run "
                            f"`rag-sidecar kb upgrade {version}`")
    if made_by != want:
        raise ModelMismatch(f"KB version {version}'s fast vectors were made by {made_by}; this gateway's fast tier "
                            f"is {want}: vectors of two models are not comparable")


def retrieval_mode(settings: Settings, embedder: Embedder | None) -> str:
    """``keyword_only`` (no embedder in front of the embedded store), ``hybrid`` or ``vector``."""
    local = serves_kb_versions(settings)
    if embedder is None and local:
        return "keyword_only"
    if settings.retrieval.hybrid:  # fused here (embedded store) or by Weaviate's hybrid query
        return "hybrid"
    return "vector"


def check_version_servable(kb_store: KnowledgeBase, version: str, settings: Settings,
                           embedder: Embedder | None) -> None:
    """Before ACTIVE moves: raise :class:`ModelMismatch` if this gateway could not search ``version``."""
    if not serves_kb_versions(settings) or embedder is None:
        return
    import json

    try:
        manifest = json.loads((kb_store.versions_dir / version / "manifest.json").read_text())
    except (OSError, ValueError):
        return  # unknown or unreadable: activate() reports it
    check_vectors_model(version, manifest, embedder)
    check_fast_set(version, manifest, fast_model_id() if progressive_applies(settings) else None)


async def warm_embedder(embedder: Any, log: Any) -> None:
    """Load an in-process model before the gateway reports ready: the first embed reads and checks the
    weights (seconds on a busy node), which would otherwise time out the first queries' guard."""
    if embedder is None or getattr(embedder, "name", "") != "local":
        return
    try:
        await embedder.embed_query("warm-up")
    except Exception as exc:  # noqa: BLE001 - the guard degrades each query; start-up goes on, logged
        log.warning("embedder warm-up failed; queries will degrade until it works",
                    extra={"event": "embedder_warmup_failed", "error": repr(exc)})
