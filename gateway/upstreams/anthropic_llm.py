"""The Anthropic Messages API as an :class:`~gateway.upstreams.base.LLM`.

The SDK's own retries are off (``max_retries=0``): it retries 408/409/429/5xx twice and honours
Retry-After without a cap, which would blow our deadline — the guard owns retries. Every SDK failure is
turned into :class:`UpstreamError` (or ``TimeoutError`` for a timeout before any output).

Measured with anthropic 2.12.0 against the stand-in (``chaos.stubs.anthropic``): once a stream's body
is being read, transport failures are *not* wrapped by the SDK — a dropped connection surfaces as
``httpx2.RemoteProtocolError``, a stall as ``httpx2.ReadTimeout``, a broken ``data:`` line as
``json.JSONDecodeError`` (the last also for a broken non-streaming body) — and an ``event: error``
arrives as a plain ``APIStatusError`` whose ``status_code`` is the stream's 200 and whose ``type``
names the error (``overloaded_error`` …).
"""
from __future__ import annotations

import json
from typing import Any, AsyncGenerator, Sequence

import anthropic
import httpx2

from fallback.documents import Chunk
from gateway.config import LLMConfig
from gateway.tracing import outgoing_headers
from gateway.upstreams.base import Generation
from gateway.upstreams.httperrors import error_for_status
from resilience.errors import UpstreamError

# Status to report for an error that arrives inside a 200 stream, by its `error.type`.
STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500,
                       "timeout_error": 504, "invalid_request_error": 400, "request_too_large": 413,
                       "authentication_error": 401, "permission_error": 403, "not_found_error": 404}


def sdk_client(api_key: Any, base_url: str | None, timeout_s: float, *,
               traces: bool = False) -> anthropic.AsyncAnthropic:
    """The SDK client, retries off, over the SDK's own aiohttp transport (``DefaultAioHttpClient``, the
    SDK's documented choice for high-concurrency async use). Measured against the stand-in, one
    ``messages.create`` costs 1.18 ms of CPU over the default httpx2 transport and 0.72 ms over aiohttp
    (a bare aiohttp POST + ``json.loads``: 0.16-0.20 ms). The transport maps aiohttp's errors to
    httpx2's, so :func:`map_error` is the same for both.

    ``traces``: the SDK's own OpenTelemetry span per call (``telemetry.tracing: otel``). Off, the SDK
    makes none: it would otherwise build one per call whenever OpenTelemetry is importable (it ships
    with the SDK) — ~0.05 ms of CPU for a span nobody records unless a provider is configured, and
    spans outside any request trace if one is (``opentelemetry-instrument`` with our tracing off)."""
    return anthropic.AsyncAnthropic(
        api_key=api_key.get_secret_value() if api_key is not None else None, base_url=base_url,
        max_retries=0, timeout=timeout_s, http_client=anthropic.DefaultAioHttpClient(),
        open_telemetry=None if traces else False)


def generation_of(body: bytes) -> Generation:
    """A :class:`Generation` from a Messages API JSON body: the text blocks joined, model, stop reason,
    token usage. Raises :class:`UpstreamError` (502, retryable) for a body that is not a message."""
    try:
        msg = json.loads(body)
        text = "".join(block["text"] for block in msg["content"] if block.get("type") == "text")
        usage = msg.get("usage") or {}
        gen = Generation(text=text, model=msg["model"], stop_reason=msg.get("stop_reason"),
                         usage={k: usage[k] for k in ("input_tokens", "output_tokens") if k in usage})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise UpstreamError(f"anthropic: malformed response: {type(exc).__name__}: {exc}", status=502,
                            retryable=True) from exc
    if not isinstance(gen.text, str) or not isinstance(gen.model, str):
        raise UpstreamError("anthropic: malformed response: text or model is not a string", status=502,
                            retryable=True)
    return gen


def build_user_message(question: str, chunks: Sequence[Chunk]) -> str:
    """Numbered passages (``[1] title — text``, one blank line apart) followed by the question."""
    if not chunks:
        return f"Context passages: (none)\n\nQuestion: {question}"
    passages = []
    for n, chunk in enumerate(chunks, start=1):
        text = chunk.text.strip()
        passages.append(f"[{n}] {chunk.title.strip()} — {text}" if chunk.title.strip() else f"[{n}] {text}")
    return "Context passages:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}"


def map_error(exc: BaseException) -> BaseException:
    """The exception to raise for an SDK failure before any output: :class:`UpstreamError` or TimeoutError."""
    if isinstance(exc, anthropic.APITimeoutError):
        return TimeoutError(f"anthropic: {exc.message}")
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamError(f"anthropic: connection failed: {exc.__cause__ or exc.message}",
                             status=None, retryable=True)
    if isinstance(exc, anthropic.APIStatusError):
        if exc.status_code < 400:  # an `event: error` inside a 200 stream
            status = STREAM_ERROR_STATUS.get(exc.type or "", 502)
            return error_for_status(status, f"anthropic: {exc.type or 'error'} in stream: {exc.api_message}")
        return error_for_status(exc.status_code, f"anthropic: HTTP {exc.status_code} {exc.type or ''}: "
                                                 f"{exc.api_message or exc.message}", exc.response.headers)
    if isinstance(exc, (anthropic.APIResponseValidationError, json.JSONDecodeError)):
        return UpstreamError(f"anthropic: malformed response: {exc}", status=502, retryable=True)
    if isinstance(exc, httpx2.TimeoutException):
        return TimeoutError(f"anthropic: {type(exc).__name__}")
    if isinstance(exc, httpx2.TransportError):
        return UpstreamError(f"anthropic: connection failed: {type(exc).__name__}: {exc}",
                             status=None, retryable=True)
    return exc


def map_stream_error(exc: BaseException, *, started: bool) -> BaseException:
    """Like :func:`map_error` for a failure while reading a stream.

    Once text has reached the caller (``started``) the answer is half-sent and cannot be retried
    transparently, so the error is never retryable then — a stall included, which is why a read
    timeout after output is an :class:`UpstreamError`, not a TimeoutError.
    """
    mapped = map_error(exc)
    if not started:
        return mapped
    if isinstance(mapped, TimeoutError):
        return UpstreamError(f"anthropic: stream stalled after partial output ({type(exc).__name__})",
                             status=None, retryable=False)
    if isinstance(mapped, UpstreamError):
        mapped.retryable = False
        mapped.retry_after_s = None
    return mapped


class TextStream:
    """Async iterator of an answer's text deltas; ``result`` fills in as it is read.

    Raises :class:`UpstreamError` mid-iteration when the upstream errors, cuts the connection or ends
    without ``message_stop`` (see :func:`map_stream_error` for retryability). Made for a guard that
    wraps "the next delta": if an attempt fails (or is cancelled) before any text was yielded, the
    next ``__anext__`` sends a fresh request (``attempts`` counts them); once text was yielded, a
    failure is final and every later ``__anext__`` raises it again — never a silent, truncated end.
    """

    def __init__(self, llm: "AnthropicLLM", question: str, chunks: Sequence[Chunk], model: str,
                 request_id: str | None) -> None:
        self.result = Generation(text="", model=model)
        self.attempts = 0
        self._args = (llm, question, chunks, model, request_id)
        self._gen: AsyncGenerator[str, None] | None = None
        self._yielded = False
        self._failure: BaseException | None = None

    def __aiter__(self) -> "TextStream":
        return self

    async def __anext__(self) -> str:
        if self._failure is not None:
            raise self._failure
        if self._gen is None:
            self.attempts += 1
            self.result = Generation(text="", model=self._args[3])
            self._gen = self._deltas(*self._args)
        try:
            delta = await self._gen.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            if not self._yielded:
                self._gen = None  # nothing reached the caller: the next call may try again
            elif isinstance(exc, UpstreamError):
                self._failure = exc
            else:  # e.g. cancelled by a deadline mid-answer
                self._failure = UpstreamError(f"anthropic: stream interrupted after partial output "
                                              f"({type(exc).__name__})", status=None, retryable=False)
            raise
        self._yielded = True
        return delta

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        if self._gen is not None:
            await self._gen.aclose()

    async def _deltas(self, llm: "AnthropicLLM", question: str, chunks: Sequence[Chunk], model: str,
                      request_id: str | None) -> AsyncGenerator[str, None]:
        try:
            events = await llm.client_for(model).messages.create(
                **llm.request_args(question, chunks, model, request_id), stream=True)
        except Exception as exc:
            raise map_error(exc) from exc
        started = finished = False
        parts: list[str] = []
        try:
            async for event in events:
                if event.type == "message_start":
                    self.result.model = event.message.model
                    self.result.usage["input_tokens"] = event.message.usage.input_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
                    self.result.text = "".join(parts)
                    started = True
                    yield event.delta.text
                elif event.type == "message_delta":
                    self.result.stop_reason = event.delta.stop_reason
                    self.result.usage["output_tokens"] = event.usage.output_tokens
                elif event.type == "message_stop":
                    finished = True
        except Exception as exc:
            raise map_stream_error(exc, started=started) from exc
        finally:
            await events.close()
        if not finished:
            raise UpstreamError("anthropic: stream ended without message_stop", status=None,
                                retryable=not started)


class AnthropicLLM:
    """Answers from numbered context passages with Claude; the SDK client is made from ``config``.

    ``generate`` / ``stream`` take ``model`` (default ``config.model``; the pipeline passes
    ``config.fallback_model`` for its second try) and ``request_id`` (sent as ``X-Request-Id``).
    Timeouts: ``config.timeout_s`` seconds per connect/read/write (a backstop; the guard's deadline
    normally fires first). Raises :class:`UpstreamError`, or TimeoutError on an SDK timeout.
    """

    name = "anthropic"

    def __init__(self, config: LLMConfig, *, client: anthropic.AsyncAnthropic | None = None,
                 sdk_traces: bool = False) -> None:
        self.config = config
        self._owns_client = client is None
        self._sdk_traces = sdk_traces
        self.client = client or sdk_client(config.api_key, config.base_url, config.timeout_s, traces=sdk_traces)
        self._endpoint_clients: dict[str, anthropic.AsyncAnthropic] = {}

    def client_for(self, model: str | None) -> anthropic.AsyncAnthropic:
        """The SDK client for ``model``: its own ``llm.endpoints[model]`` base URL / key, else the default."""
        ep = self.config.endpoints.get(model or self.config.model)
        if ep is None or (ep.base_url is None and ep.api_key is None):
            return self.client
        client = self._endpoint_clients.get(model or "")
        if client is None:
            key = ep.api_key or self.config.api_key
            client = self._endpoint_clients[model or ""] = sdk_client(key, ep.base_url or self.config.base_url,
                                                                      self.config.timeout_s,
                                                                      traces=self._sdk_traces)
        return client

    def request_args(self, question: str, chunks: Sequence[Chunk], model: str | None,
                     request_id: str | None) -> dict[str, Any]:
        """Keyword arguments for ``messages.create`` (without ``stream``)."""
        # No temperature: SDK 2.x sends anthropic-version 2026-10-21, which rejects temperature/top_p/top_k
        # with a 400 ("Extra inputs are not permitted") even at default values, and has no such argument.
        args: dict[str, Any] = {
            "model": model or self.config.model, "max_tokens": self.config.max_tokens,
            "system": self.config.system_prompt,
            "messages": [{"role": "user", "content": build_user_message(question, chunks)}]}
        if request_id:
            args["extra_headers"] = {"X-Request-Id": request_id, **outgoing_headers()}  # traceparent
        return args

    async def generate(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
                       request_id: str | None = None) -> Generation:
        """One complete answer. Raises :class:`UpstreamError` or TimeoutError."""
        # The raw response (error statuses still raise as usual): the SDK's Message model is built field by
        # field, nested blocks included, for the 4 fields read here — 0.12 ms of the ~0.75 ms CPU per call
        # (measured against bench.canned); :func:`generation_of` reads the same fields from the JSON.
        try:
            raw = await self.client_for(model).messages.with_raw_response.create(
                **self.request_args(question, chunks, model, request_id))
            body = await raw.read()
        except Exception as exc:
            raise map_error(exc) from exc
        return generation_of(body)

    def stream(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
               request_id: str | None = None) -> TextStream:
        """Text deltas as they arrive (``async for``); nothing is sent until the first iteration."""
        return TextStream(self, question, chunks, model or self.config.model, request_id)

    async def close(self) -> None:
        for client in self._endpoint_clients.values():
            await client.close()
        if self._owns_client:
            await self.client.close()
