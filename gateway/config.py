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

from resilience.config import BreakerConfig, BulkheadConfig, GuardConfig, RateLimitConfig, RetryConfig

ENV_PREFIX = "RAG_SIDECAR__"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the offending key's dotted path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="request bodies above this get 413")
    max_query_chars: int = Field(4000, ge=1)
    default_top_k: int = Field(5, ge=1, le=100)
    max_top_k: int = Field(50, ge=1, le=1000)
    request_timeout_s: float = Field(10.0, gt=0, description="default per-request budget")
    max_request_timeout_s: float = Field(60.0, gt=0, description="cap on X-Request-Timeout")
    fallback_reserve_s: float = Field(0.25, ge=0, description="budget kept back for the fallback path")
    shutdown_grace_s: float = Field(10.0, ge=0)


class AuthConfig(_Section):
    api_keys: list[SecretStr] = Field(default_factory=list, description="empty = no auth on /v1/*")
    admin_token: SecretStr | None = Field(None, description="unset = /admin/* disabled (404)")


class KBConfig(_Section):
    sample_corpus: Path = REPO_ROOT / "corpus"
    auto_ingest_sample: bool = Field(True, description="ingest the sample corpus when no KB version exists")
    chunk_chars: int = Field(900, ge=100)
    chunk_overlap: int = Field(150, ge=0)
    keep_versions: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _overlap_lt_chunk(self) -> "KBConfig":
        if self.chunk_overlap >= self.chunk_chars:
            raise ValueError("chunk_overlap must be smaller than chunk_chars")
        return self


class EmbedderConfig(_Section):
    backend: Literal["local", "openai", "none"] = "local"
    url: str = Field("http://127.0.0.1:8081/v1", description="openai backend: base URL (…/v1)")
    model: str = "text-embedding-3-small"
    api_key: SecretStr | None = None
    batch_size: int = Field(16, ge=1, le=2048)
    timeout_s: float = Field(2.0, gt=0)


class WeaviateConfig(_Section):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    secure: bool = False
    api_key: SecretStr | None = None
    collection: str = "RagChunks"
    text_property: str = "text"
    title_property: str = "title"
    source_property: str = "source"
    use_near_text: bool = Field(False, description="collection has a vectorizer: query with near_text")
    init_timeout_s: float = 5.0


class VectorStoreConfig(_Section):
    backend: Literal["embedded", "weaviate"] = "embedded"
    timeout_s: float = Field(1.5, gt=0)
    weaviate: WeaviateConfig = Field(default_factory=WeaviateConfig)


class LLMConfig(_Section):
    backend: Literal["auto", "anthropic", "extractive"] = Field(
        "auto", description="auto = anthropic when an API key is set, else extractive")
    model: str = "claude-sonnet-4-5"
    fallback_model: str | None = Field("claude-haiku-4-5", description="tried when the primary fails")
    api_key: SecretStr | None = None
    base_url: str | None = None
    max_tokens: int = Field(512, ge=1, le=64000)
    temperature: float = Field(0.0, ge=0, le=1)
    timeout_s: float = Field(8.0, gt=0)
    system_prompt: str = (
        "Answer the question using only the numbered context passages. Cite passages like [1]. "
        "If the context does not contain the answer, say so.")

    @property
    def effective_backend(self) -> str:
        if self.backend == "auto":
            return "anthropic" if self.api_key is not None and self.api_key.get_secret_value() else "extractive"
        return self.backend


class ResilienceConfig(_Section):
    embedder: GuardConfig = Field(default_factory=lambda: GuardConfig(timeout_s=2.0))
    vector_db: GuardConfig = Field(default_factory=lambda: GuardConfig(timeout_s=1.5))
    llm: GuardConfig = Field(default_factory=lambda: GuardConfig(
        timeout_s=8.0, breaker=BreakerConfig(slow_call_s=6.0), bulkhead=BulkheadConfig(max_concurrent=16)))
    redis_url: str | None = Field(None, description="share breaker state across replicas; None = local")


class CacheConfig(_Section):
    enabled: bool = True
    fresh_ttl_s: float = Field(300.0, ge=0)
    stale_ttl_s: float = Field(86400.0, ge=0, description="stale-if-error window")
    size_limit_mb: int = Field(256, ge=1)


class FallbackConfig(_Section):
    keyword_index: bool = True
    extractive_sentences: int = Field(3, ge=1, le=20)


class TelemetryConfig(_Section):
    statsd_enabled: bool = True
    agent_host: str | None = None
    dogstatsd_port: int = 8125
    dogstatsd_url: str | None = None
    namespace: str = "rag"
    env: str | None = None
    service: str = "rag-sidecar"
    version: str | None = None
    prometheus: bool = True


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    log_prompts: bool = Field(False, description="include queries and answers in request logs")


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
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


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
