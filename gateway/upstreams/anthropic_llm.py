"""The Anthropic Messages API as an :class:`~gateway.upstreams.base.LLM`, over aiohttp.

Why not the ``anthropic`` SDK: measured against the stand-in (8 calls in flight, 5 passages of 1.5 kB),
one non-streaming ``messages.create`` cost 1.17 ms of CPU in the SDK over httpx2 and 0.18 ms as one
aiohttp POST + ``json.loads`` — the SDK's request building, httpx/anyio transport and pydantic response
models were half the CPU of a keyword-fallback ``/v1/query``. The wire format is small and
stable (the stand-in is verified against the SDK in ``tests/test_anthropic_stub.py``), and
``/v1/messages`` already speaks it over aiohttp (:mod:`gateway.upstreams.anthropic_http`).

There are no retries here: the guard owns retries, timeouts and breakers. Every failure is an
:class:`UpstreamError` (status, retryable, Retry-After, caller_fault as in
:func:`~gateway.upstreams.httperrors.error_for_status`) or a ``TimeoutError``:

- an HTTP error answer → its status (429/5xx/529 retryable, Retry-After parsed; 400/413/422 the caller's);
- no connection, a reset, a body cut short → status None, retryable;
- a body or stream event that is not well-formed JSON → 502, retryable;
- connect (``llm.connect_timeout_s``) or read silence (``llm.timeout_s``, a backstop: the guard's
  deadline normally fires first) → ``TimeoutError``;
- inside a 200 stream, an ``event: error`` → the status its ``error.type`` stands for (529 for
  ``overloaded_error`` …); once text has reached the caller no failure is retryable
  (:func:`map_stream_error`).
"""
from __future__ import annotations

import json
from typing import Any, AsyncGenerator, Mapping, Sequence

import aiohttp

from fallback.documents import Chunk
from gateway.config import LLMConfig
from gateway.llm_router import DEFAULT_BASE_URL
from gateway.tracing import outgoing_headers
from gateway.upstreams.anthropic_http import STREAM_ERROR_STATUS
from gateway.upstreams.base import Generation
from gateway.upstreams.httperrors import error_for_status
from resilience.errors import UpstreamError

# The API version anthropic SDK 2.x sends; it rejects temperature/top_p/top_k (we send none).
API_VERSION = "2026-10-21"


def build_user_message(question: str, chunks: Sequence[Chunk]) -> str:
    """Numbered passages (``[1] title — text``, one blank line apart) followed by the question."""
    if not chunks:
        return f"Context passages: (none)\n\nQuestion: {question}"
    passages = []
    for n, chunk in enumerate(chunks, start=1):
        text = chunk.text.strip()
        title = chunk.title.strip()
        passages.append(f"[{n}] {title} — {text}" if title else f"[{n}] {text}")
    return "Context passages:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}"


def map_error(exc: BaseException) -> BaseException:
    """The exception to raise for a transport failure before any output: :class:`UpstreamError` or
    TimeoutError (an :class:`UpstreamError` is returned as it is)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's connect/read timeouts are TimeoutErrors too
        return TimeoutError(f"anthropic: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"anthropic: connection failed: {type(exc).__name__}: {exc}", status=None,
                             retryable=True)
    if isinstance(exc, ValueError):  # json.JSONDecodeError, UnicodeDecodeError
        return UpstreamError(f"anthropic: malformed response: {type(exc).__name__}: {exc}", status=502,
                             retryable=True)
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


def _http_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    try:
        err = json.loads(body).get("error") or {}
        etype, message = str(err.get("type") or ""), str(err.get("message") or "")
    except (ValueError, AttributeError):
        etype, message = "", body[:200].decode("utf-8", "replace")
    return error_for_status(status, f"anthropic: HTTP {status} {etype}: {message}"[:300], headers)


def _stream_error(payload: dict[str, Any]) -> UpstreamError:
    """An ``event: error`` inside a 200 stream, as the status its ``error.type`` stands for."""
    raw = payload.get("error")
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    etype = str(err.get("type") or "api_error")
    return error_for_status(STREAM_ERROR_STATUS.get(etype, 502),
                            f"anthropic: {etype} in stream: {err.get('message', '')}"[:300])


async def _sse(content: aiohttp.StreamReader) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON payload of each server-sent event (comments and data-less events skipped).
    Raises ValueError for a ``data:`` that is not a JSON object."""
    datas: list[bytes] = []
    async for line in content:
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            datas.append(line[5:])
        elif not line and datas:
            payload = json.loads(datas[0] if len(datas) == 1 else b"\n".join(datas))
            datas = []
            if not isinstance(payload, dict):
                raise ValueError("stream event data is not a JSON object")
            yield payload


class TextStream:
    """Async iterator of an answer's text deltas; ``result`` fills in as it is read.

    Raises :class:`UpstreamError` mid-iteration when the upstream errors, cuts the connection or ends
    without ``message_stop`` (see :func:`map_stream_error` for retryability). Made for a guard that
    wraps "the next delta": if an attempt fails (or is cancelled) before any text was yielded, the
    next ``__anext__`` sends a fresh request (``attempts`` counts them); once text was yielded, a
    failure is final and every later ``__anext__`` raises it again — never a silent, truncated end.
    """

    def __init__(self, llm: AnthropicLLM, question: str, chunks: Sequence[Chunk], model: str,
                 request_id: str | None) -> None:
        self.result = Generation(text="", model=model)
        self.attempts = 0
        self._args = (llm, question, chunks, model, request_id)
        self._gen: AsyncGenerator[str, None] | None = None
        self._yielded = False
        self._failure: BaseException | None = None

    def __aiter__(self) -> TextStream:
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

    async def _deltas(self, llm: AnthropicLLM, question: str, chunks: Sequence[Chunk], model: str,
                      request_id: str | None) -> AsyncGenerator[str, None]:
        resp = await llm.post(llm.request_args(question, chunks, model, stream=True), model, request_id)
        started = finished = False
        parts: list[str] = []
        try:
            async for event in _sse(resp.content):
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta":
                        text = delta.get("text") or ""
                        parts.append(text)
                        self.result.text = "".join(parts)
                        started = True
                        yield text
                elif kind == "message_start":
                    message = event.get("message") or {}
                    self.result.model = message.get("model") or model
                    self.result.usage["input_tokens"] = (message.get("usage") or {}).get("input_tokens", 0)
                elif kind == "message_delta":
                    self.result.stop_reason = (event.get("delta") or {}).get("stop_reason")
                    self.result.usage["output_tokens"] = (event.get("usage") or {}).get("output_tokens", 0)
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    raise _stream_error(event)
        except GeneratorExit:
            raise
        except Exception as exc:
            resp.close()
            raise map_stream_error(exc, started=started) from exc
        finally:
            resp.release()  # closes instead when the body was not read to its end
        if not finished:
            raise UpstreamError("anthropic: stream ended without message_stop", status=None,
                                retryable=not started)


class AnthropicLLM:
    """Answers from numbered context passages with Claude, over one aiohttp session (made on first use).

    ``generate`` / ``stream`` take ``model`` (default ``config.model``; the pipeline passes each model of
    its ladder) and ``request_id`` (sent as ``X-Request-Id``, with the span's ``traceparent``). A model
    with an ``llm.endpoints`` entry goes to its own base URL / key. No connection cap: the guard's
    bulkhead bounds the calls in flight. Raises :class:`UpstreamError`, or TimeoutError.
    """

    name = "anthropic"

    def __init__(self, config: LLMConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._endpoints: dict[str, tuple[str, dict[str, str]]] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s,
                                              sock_read=self.config.timeout_s))
        return self._session

    def endpoint(self, model: str) -> tuple[str, dict[str, str]]:
        """``(messages URL, headers)`` for ``model``: its ``llm.endpoints`` entry, else the defaults."""
        cached = self._endpoints.get(model)
        if cached is None:
            ep = self.config.endpoints.get(model)
            base = (ep.base_url if ep is not None and ep.base_url else None) or self.config.base_url
            key = (ep.api_key if ep is not None and ep.api_key is not None else None) or self.config.api_key
            headers = {"anthropic-version": API_VERSION, "content-type": "application/json",
                       "accept": "application/json"}
            if key is not None:
                headers["x-api-key"] = key.get_secret_value()
            if len(self._endpoints) >= 64:  # models come from config: a bound, not an LRU
                self._endpoints.clear()
            cached = self._endpoints[model] = ((base or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages", headers)
        return cached

    def request_args(self, question: str, chunks: Sequence[Chunk], model: str | None, *,
                     stream: bool = False) -> dict[str, Any]:
        """The Messages API request body. No temperature: API version 2026-10-21 rejects
        temperature/top_p/top_k with a 400 even at default values."""
        body: dict[str, Any] = {
            "model": model or self.config.model, "max_tokens": self.config.max_tokens,
            "system": self.config.system_prompt,
            "messages": [{"role": "user", "content": build_user_message(question, chunks)}]}
        if stream:
            body["stream"] = True
        return body

    async def post(self, body: dict[str, Any], model: str, request_id: str | None) -> aiohttp.ClientResponse:
        """Send ``body``; the response once its status is a success (the caller reads and releases it)."""
        url, headers = self.endpoint(model)
        if request_id:
            headers = {**headers, "X-Request-Id": request_id, **outgoing_headers()}  # traceparent
        if body.get("stream"):
            headers = {**headers, "accept": "text/event-stream"}
        try:
            resp = await self.session.post(url, data=json.dumps(body).encode(), headers=headers)
        except Exception as exc:
            raise map_error(exc) from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            raise _http_error(resp.status, raw, resp.headers)
        return resp

    async def generate(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
                       request_id: str | None = None) -> Generation:
        """One complete answer. Raises :class:`UpstreamError` or TimeoutError."""
        model = model or self.config.model
        resp = await self.post(self.request_args(question, chunks, model), model, request_id)
        try:
            msg = json.loads(await resp.read())
            if not isinstance(msg, dict) or msg.get("type") != "message" or not isinstance(msg.get("content"), list):
                raise ValueError("not a Messages API message")
            text = "".join(b.get("text", "") for b in msg["content"] if isinstance(b, dict) and b.get("type") == "text")
        except Exception as exc:
            raise map_error(exc) from exc
        finally:
            resp.release()
        raw_usage = msg.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        return Generation(text=text, model=msg.get("model") or model, stop_reason=msg.get("stop_reason"),
                          usage={"input_tokens": usage.get("input_tokens", 0),
                                 "output_tokens": usage.get("output_tokens", 0)})

    def stream(self, question: str, chunks: Sequence[Chunk], *, model: str | None = None,
               request_id: str | None = None) -> TextStream:
        """Text deltas as they arrive (``async for``); nothing is sent until the first iteration."""
        return TextStream(self, question, chunks, model or self.config.model, request_id)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
