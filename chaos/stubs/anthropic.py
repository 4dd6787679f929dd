"""A stand-in for the Anthropic Messages API that the real ``anthropic`` SDK talks to unchanged.

Routes: ``POST /v1/messages`` (JSON, or SSE with ``"stream": true``), ``GET /v1/models``, plus the
fault control routes of :mod:`chaos.stubs.httpfaults`. Point a client at it with
``AsyncAnthropic(api_key="anything", base_url=stub.url, max_retries=0)``.

Validation follows the ``anthropic-version`` header: with 2026-10-21 (what SDK 2.x sends)
``temperature`` / ``top_p`` / ``top_k`` are rejected with a 400, as the real API does.

Answers are deterministic: the default reply quotes the first sentence of the first numbered context
passage in the last user message (a line like ``[1] Title — Text…``, the ``Title — `` part dropped)
followed by `` [1]``, or :data:`NO_CONTEXT_REPLY` when there is none — so tests can assert relevance.

Faults (``Faults.models`` restricts them to requests for those models):
``status`` → Anthropic's error JSON (429 ``rate_limit_error``, 500/503 ``api_error``, 529
``overloaded_error`` …) with ``retry-after`` / ``retry-after-ms``; ``hang``, ``reset``, ``latency_s``,
``malformed`` (broken JSON, or for a stream a truncated SSE ``data:`` line) as in httpfaults. For streams,
events are counted from 1 = ``message_start``, 2 = ``content_block_start``, 3 = ``ping``, 4… =
``content_block_delta``: ``stream_cut_after=N`` sends N events then drops the connection;
``stream_stall_after=N`` sends N events then goes silent (socket open) until the stall is cleared —
then the stream resumes — or the server stops; ``status`` *together with* ``stream_cut_after=N`` sends
N events then an ``event: error`` whose payload matches the status (529 → ``overloaded_error``) and
ends the stream cleanly, as the real API does when it overloads mid-answer.

``python -m chaos.stubs.anthropic --port 8082 [--api-key K] [--faults '{"status": 529}']``
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
from typing import Any, Callable, ClassVar, Sequence

from aiohttp import web

from chaos.stubs.faults import Faults
from chaos.stubs.httpfaults import StubServer, drop_connection, json_body, plan_of

NO_CONTEXT_REPLY = "I could not find the answer in the provided context."
DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")
# API version 2026-10-21 (what SDK 2.x sends) dropped the sampling parameters: sending one is a 400.
NEW_API_VERSION = "2026-10-21"
REMOVED_SAMPLING_PARAMS = ("temperature", "top_p", "top_k")

# https://docs.anthropic.com/en/api/errors — the `error.type` each HTTP status carries.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
ERROR_MESSAGES = {"rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
                  "overloaded_error": "Overloaded", "api_error": "Internal server error",
                  "timeout_error": "Request timed out"}

Reply = str | Callable[[dict[str, Any]], str]
_RID_KEY: web.RequestKey[str] = web.RequestKey("anthropic_request_id", str)
PREFILL_ERROR = ("This model does not support assistant message prefill. "
                 "The conversation must end with a user message.")

_PASSAGE = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TITLE_SEP = " — "


def error_type_for(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(status: int, message: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    etype = error_type_for(status)
    body: dict[str, Any] = {"type": "error",
                            "error": {"type": etype, "message": message or ERROR_MESSAGES.get(etype, etype)}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def text_of(content: Any) -> str:
    """The text of a message ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def first_passage_sentence(text: str) -> str | None:
    """First sentence of the first ``[n] …`` passage in ``text`` (None if there is none)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _PASSAGE.match(line)
        if not m:
            continue
        parts = [m.group(2)]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or _PASSAGE.match(nxt):
                break
            parts.append(nxt.strip())
        passage = " ".join(parts).strip()
        head, sep, rest = passage.partition(_TITLE_SEP)
        # Only a short, sentence-free head is a title; otherwise the dash belongs to the text.
        if sep and rest and len(head) <= 120 and not _SENTENCE_END.search(head + " "):
            passage = rest
        sentence = _SENTENCE_END.split(passage, maxsplit=1)[0].strip()
        if sentence:
            return sentence
    return None


def default_reply(body: dict[str, Any]) -> str:
    """Quote the first context passage's first sentence with a ``[1]`` citation."""
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    sentence = first_passage_sentence(text_of(users[-1].get("content"))) if users else None
    return f"{sentence} [1]" if sentence else NO_CONTEXT_REPLY


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def _validate(body: Any, api_version: str | None) -> str | None:
    """The invalid_request_error message for a bad Messages body, or None if it is fine."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if api_version is not None and api_version >= NEW_API_VERSION:
        for param in REMOVED_SAMPLING_PARAMS:
            if param in body:
                return f"{param}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if "max_tokens" not in body:
        return "max_tokens: Field required"
    mt = body["max_tokens"]
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(m.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic(StubServer):
    """Anthropic Messages API stand-in (JSON and SSE) with switchable faults.

    ``api_key`` None accepts any non-empty key (``x-api-key`` or ``Authorization: Bearer``); a string
    must match. ``reply`` overrides the answer (a string, or a function of the request body).
    ``models`` is what ``GET /v1/models`` lists; with ``strict_models`` other models get 404.
    ``delta_words`` is how many words each ``text_delta`` carries.
    """

    name: ClassVar[str] = "anthropic"

    def __init__(self, *, api_key: str | None = None, reply: Reply | None = None,
                 models: Sequence[str] = DEFAULT_MODELS, strict_models: bool = False, delta_words: int = 2,
                 faults: Faults | None = None, seed: int = 0) -> None:
        super().__init__(faults=faults, seed=seed)
        self.api_key = api_key
        self.reply = reply
        self.models = list(models)
        self.strict_models = strict_models
        self.delta_words = max(1, delta_words)
        self._ids = itertools.count(1)

    # -- hooks ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages), web.get("/v1/models", self._models),
                web.post("/v1/messages/count_tokens", self._count_tokens)]

    def error_body(self, request: web.Request, status: int) -> dict[str, Any]:
        rid = request.get(_RID_KEY) or self._request_id()
        request[_RID_KEY] = rid
        return error_payload(status, plan_of(request).error_message, request_id=rid)

    def error_headers(self, request: web.Request) -> dict[str, str]:
        rid = request.get(_RID_KEY) or self._request_id()
        request[_RID_KEY] = rid
        return {"request-id": rid}

    async def is_streaming(self, request: web.Request) -> bool:
        body = await json_body(request)
        return request.path == "/v1/messages" and isinstance(body, dict) and body.get("stream") is True

    async def malformed_response(self, request: web.Request) -> web.StreamResponse:
        if await self.is_streaming(request):
            resp = self._sse_response()
            await resp.prepare(request)
            await resp.write(b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_\n\n')
            await resp.write_eof()
            return resp
        return web.Response(status=200, content_type="application/json",
                            body=b'{"id": "msg_broken", "type": "message", "content": [{"type": "te')

    # -- helpers ----------------------------------------------------------------------------------
    def _request_id(self) -> str:
        return f"req_fake{next(self._ids):06d}"

    def _error(self, status: int, message: str) -> web.Response:
        rid = self._request_id()
        return web.json_response(error_payload(status, message, rid), status=status, headers={"request-id": rid})

    def _auth_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            return self._error(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "invalid x-api-key")
        return None

    def answer(self, body: dict[str, Any]) -> str:
        """The reply text for a (valid) request body."""
        if self.reply is None:
            return default_reply(body)
        return self.reply(body) if callable(self.reply) else self.reply

    @staticmethod
    def _sse_response() -> web.StreamResponse:
        return web.StreamResponse(status=200, headers={"content-type": "text/event-stream; charset=utf-8",
                                                       "cache-control": "no-cache"})

    # -- routes -----------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                 "created_at": "2025-09-29T00:00:00Z", "lifecycle": "active"} for m in self.models]
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _count_tokens(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "messages: Field required")
        prompt = text_of(body.get("system")) + " " + " ".join(
            text_of(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        return web.json_response({"input_tokens": max(1, len(prompt.split()))},
                                 headers={"request-id": self._request_id()})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await json_body(request)
        if (problem := _validate(body, request.headers.get("anthropic-version"))) is not None:
            return self._error(400, problem)
        last = body["messages"][-1]
        if plan_of(request).reject_prefill and isinstance(last, dict) and last.get("role") == "assistant":
            return self._error(400, PREFILL_ERROR)
        if self.strict_models and body["model"] not in self.models:
            return self._error(404, f"model: {body['model']}")

        words = _words(self.answer(body))
        stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[:body["max_tokens"]], "max_tokens"
        text = "".join(words)
        prompt = text_of(body.get("system")) + " " + " ".join(text_of(m.get("content")) for m in body["messages"])
        usage = {"input_tokens": max(1, len(prompt.split())), "output_tokens": len(words)}
        msg_id = f"msg_fake{next(self._ids):06d}"
        if body.get("stream"):
            return await self._stream(request, body["model"], msg_id, words, stop_reason, usage)
        return web.json_response(
            {"id": msg_id, "type": "message", "role": "assistant", "model": body["model"],
             "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": None,
             "usage": usage}, headers={"request-id": self._request_id()})

    async def _stream(self, request: web.Request, model: str, msg_id: str, words: list[str],
                      stop_reason: str, usage: dict[str, int]) -> web.StreamResponse:
        step = self.delta_words
        deltas = ["".join(words[i:i + step]) for i in range(0, len(words), step)]
        events = [
            sse("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}}),
            sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}}),
            sse("ping", {"type": "ping"}),
            *(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": d}}) for d in deltas),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                  "usage": {"output_tokens": usage["output_tokens"]}}),
            sse("message_stop", {"type": "message_stop"}),
        ]
        resp = self._sse_response()
        resp.headers["request-id"] = self._request_id()
        await resp.prepare(request)
        try:
            return await self._send_events(request, resp, events)
        except ConnectionResetError:
            # The client went away mid-stream (e.g. its read timeout fired during a stall).
            return resp

    async def _send_events(self, request: web.Request, resp: web.StreamResponse,
                           events: list[bytes]) -> web.StreamResponse:
        plan = plan_of(request)
        source = plan.source or self.faults
        if plan.no_stop:
            events = events[:-1]
        first_delta = 3  # message_start, content_block_start, ping, then the deltas
        for sent, event in enumerate(events):
            if plan.stream_cut_after is not None and sent >= plan.stream_cut_after:
                if plan.status is not None:
                    await resp.write(sse("error", error_payload(plan.status)))
                    await resp.write_eof()
                    return resp
                return drop_connection(request)
            if (plan.stream_stall_after is not None and sent == plan.stream_stall_after
                    and await self.injector.hold_while(lambda: source.stream_stall_after is not None)):
                return drop_connection(request)
            if plan.malformed_after is not None and sent == plan.malformed_after:
                await resp.write(b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n')
                await resp.write_eof()
                return resp
            if sent == first_delta and plan.first_token_delay_s > 0:
                if await self.injector.hold_while(lambda: True, plan.first_token_delay_s):
                    return drop_connection(request)
            elif sent > first_delta and plan.event_interval_s > 0 and event.startswith(b"event: content_block_delta"):
                await asyncio.sleep(plan.event_interval_s)  # stand-in pacing: a long healthy answer
            await resp.write(event)
        await resp.write_eof()
        return resp

    # -- python -m --------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api-key", default=None, help="required key (default: any non-empty key)")
        parser.add_argument("--reply", default=None, help="fixed reply text (default: quote passage [1])")

    @classmethod
    def from_args(cls, args: argparse.Namespace, faults: Faults) -> "FakeAnthropic":
        return cls(api_key=args.api_key, reply=args.reply, faults=faults, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(FakeAnthropic.main())
