"""An OpenAI-compatible ``POST {url}/embeddings`` endpoint as an :class:`~gateway.upstreams.base.Embedder`.

Works with OpenAI and the many servers that copy its API (vLLM, TEI, Ollama, LiteLLM …). Vectors are
returned L2-normalised as float32 whatever the server sends, so cosine similarity is a dot product.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import aiohttp
import numpy as np

from gateway.config import EmbedderConfig
from gateway.tracing import outgoing_headers
from gateway.upstreams.httperrors import error_for_status
from resilience.errors import UpstreamError


def _malformed(detail: str) -> UpstreamError:
    # A garbled answer is usually a proxy or a half-restarted server: worth another attempt.
    return UpstreamError(f"embedder: malformed response: {detail}", status=502, retryable=True)


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error")
        return str(message) if message else raw[:200].decode(errors="replace")
    except (ValueError, AttributeError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


def parse_embeddings(raw: bytes, expected: int) -> np.ndarray:
    """``(expected, dim)`` float32 rows in input order from a response body. Raises UpstreamError(502)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _malformed(f"not JSON ({exc})") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        raise _malformed(f"expected {expected} embeddings, got "
                         f"{len(data) if isinstance(data, list) else type(data).__name__}")
    try:
        ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
        matrix = np.asarray([item["embedding"] for item in ordered], dtype=np.float32)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise _malformed(f"bad embedding entries ({exc})") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.isfinite(matrix).all():
        raise _malformed(f"embeddings of shape {matrix.shape} or with non-finite values")
    return matrix


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible HTTP API.

    ``config.url`` is the API base (``…/v1``); ``config.batch_size`` caps inputs per request;
    ``config.timeout_s`` (seconds) bounds each request as a backstop behind the guard's deadline.
    ``dim`` is None until the first answer, then fixed: a later answer of another length raises
    a non-retryable :class:`UpstreamError` (mixing lengths would corrupt the vector store).
    Raises :class:`UpstreamError` (status None for connection failures, 502 for malformed answers)
    or TimeoutError.
    """

    name = "openai"

    # The server owns the tokenizer and truncates (OpenAI: 8,191 tokens); its cost is not our CPU.
    max_query_tokens: int | None = None

    def truncate_query(self, text: str) -> tuple[str, int]:
        """Unchanged; the count is the character count (an upper bound on tokens for most tokenizers)."""
        return text, len(text)

    def __init__(self, config: EmbedderConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self.model_id = f"openai:{config.url.rstrip('/')}#{config.model}"
        self.dim: int | None = None
        self._session = session
        self._owns_session = session is None
        self._endpoint = config.url.rstrip("/") + "/embeddings"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Made lazily: an aiohttp session must be created inside the running event loop.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
            self._owns_session = True
        return self._session

    def _headers(self, request_id: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **outgoing_headers()}  # traceparent: one trace
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        if request_id:
            headers["X-Request-Id"] = request_id
        return headers

    async def _embed_batch(self, texts: Sequence[str], request_id: str | None) -> np.ndarray:
        payload: dict[str, Any] = {"model": self.config.model, "input": list(texts), "encoding_format": "float"}
        try:
            async with self._get_session().post(self._endpoint, json=payload,
                                                headers=self._headers(request_id)) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except TimeoutError as exc:
            # aiohttp's read/connect timeouts are both TimeoutError and ClientError: a timeout wins.
            raise TimeoutError(f"embedder: no answer within {self.config.timeout_s}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"embedder: connection failed: {type(exc).__name__}: {exc}",
                                status=None, retryable=True) from exc
        if status != 200:
            raise error_for_status(status, f"embedder: HTTP {status}: {_error_message(raw)}", headers)
        matrix = parse_embeddings(raw, len(texts))
        if self.dim is None:
            self.dim = int(matrix.shape[1])
        elif matrix.shape[1] != self.dim:
            raise UpstreamError(f"embedder: vector length changed from {self.dim} to {matrix.shape[1]}",
                                status=502, retryable=False)
        return l2_normalise(matrix)

    async def embed_query(self, text: str, *, request_id: str | None = None) -> np.ndarray:
        """One unit-length float32 vector of length :attr:`dim`."""
        return (await self._embed_batch([text], request_id))[0]

    async def embed_passages(self, texts: Sequence[str], *, request_id: str | None = None) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit rows, sent in batches of ``config.batch_size`` one after another."""
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        size = self.config.batch_size
        parts = [await self._embed_batch(texts[i:i + size], request_id) for i in range(0, len(texts), size)]
        return np.concatenate(parts, axis=0)

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
