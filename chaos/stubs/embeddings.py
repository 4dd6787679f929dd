"""A stand-in for an OpenAI-compatible embeddings endpoint (``POST /v1/embeddings``).

Vectors are deterministic unit vectors from a signed, hashed bag of words (English stop words
dropped), so texts that share words have a positive cosine similarity and unrelated texts are near
zero: enough for ranking tests, no model needed. Supports ``input`` as a string or a list of strings,
``dimensions`` and ``encoding_format`` (``float`` | ``base64``); ``GET /v1/models`` for health checks.
Faults and control routes as in :mod:`chaos.stubs.httpfaults` (errors in OpenAI's error shape).

``python -m chaos.stubs.embeddings --port 8081 [--dim 384] [--api-key K] [--faults '{"status": 503}']``
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import re
from collections import Counter
from typing import Any, ClassVar

import numpy as np
from aiohttp import web

from chaos.stubs.faults import Faults
from chaos.stubs.httpfaults import StubServer, json_body

DEFAULT_DIM = 384
MAX_INPUTS = 2048
MAX_DIM = 4096
_TOKEN = re.compile(r"\w+")
_STOP_WORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was what when "
    "where which who why will with you your".split())
_ERROR_TYPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                404: ("invalid_request_error", "model_not_found"), 429: ("requests", "rate_limit_exceeded")}


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens without stop words (all of them if nothing else is left)."""
    words = _TOKEN.findall(text.lower())
    content = [w for w in words if w not in _STOP_WORDS]
    return content or words or [text]


def embed_text(text: str, dim: int = DEFAULT_DIM) -> np.ndarray:
    """The stand-in's embedding of ``text``: a float32 unit vector of length ``dim``."""
    vec = np.zeros(dim, dtype=np.float64)
    for token, count in Counter(tokens(text)).items():
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += (1.0 if (h >> 40) & 1 else -1.0) * (1.0 + np.log(count))
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:  # every token's contribution cancelled out: fall back to a fixed axis
        vec[0] = 1.0
        norm = 1.0
    return (vec / norm).astype(np.float32)


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def _parse_inputs(body: Any) -> tuple[list[str], str] | str:
    """(texts, model), or the 400 message for a bad body."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter"
    raw = body.get("input")
    if raw is None:
        return "'input' is a required property"
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return "'$.input' is invalid: expected a non-empty string or a non-empty list of strings"
    if len(texts) > MAX_INPUTS:
        return f"'$.input' is too long: at most {MAX_INPUTS} inputs per request"
    if any(not t for t in texts):
        return "'$.input' is invalid: empty strings are not allowed"
    return texts, model


class FakeEmbeddings(StubServer):
    """OpenAI-compatible embeddings stand-in with switchable faults.

    ``dim`` is the default vector length (a request's ``dimensions`` overrides it); ``api_key`` None
    means no auth, a string requires ``Authorization: Bearer <api_key>``. ``batch_sizes`` records how
    many inputs each successful request carried; ``inputs_embedded`` counts them all.
    """

    name: ClassVar[str] = "embeddings"

    def __init__(self, *, dim: int = DEFAULT_DIM, api_key: str | None = None, models: tuple[str, ...] = (
            "text-embedding-3-small",), faults: Faults | None = None, seed: int = 0) -> None:
        super().__init__(faults=faults, seed=seed)
        self.dim = dim
        self.api_key = api_key
        self.models = list(models)
        self.batch_sizes: list[int] = []

    @property
    def inputs_embedded(self) -> int:
        return sum(self.batch_sizes)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/embeddings", self._embeddings), web.get("/v1/models", self._list_models)]

    def error_body(self, request: web.Request, status: int) -> dict[str, Any]:
        return openai_error(status, f"injected fault: HTTP {status}")

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return web.json_response(openai_error(401, "You didn't provide an API key."), status=401)
        if token.strip() != self.api_key:
            return web.json_response(openai_error(401, "Incorrect API key provided."), status=401)
        return None

    async def _list_models(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "rag-sidecar-stub"} for m in self.models]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        body = await json_body(request)
        parsed = _parse_inputs(body)
        if isinstance(parsed, str):
            return web.json_response(openai_error(400, parsed), status=400)
        texts, model = parsed
        dim = body.get("dimensions", self.dim)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
            return web.json_response(openai_error(400, f"'dimensions' must be an integer in 1..{MAX_DIM}"),
                                     status=400)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return web.json_response(openai_error(400, "'encoding_format' must be 'float' or 'base64'"),
                                     status=400)
        data = []
        for i, text in enumerate(texts):
            vec = embed_text(text, dim)
            encoded: Any = (base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64"
                            else [float(x) for x in vec])
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        self.batch_sizes.append(len(texts))
        n_tokens = sum(len(t.split()) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dim", type=int, default=DEFAULT_DIM, help="vector length")
        parser.add_argument("--api-key", default=None, help="required bearer token (default: no auth)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, faults: Faults) -> "FakeEmbeddings":
        return cls(dim=args.dim, api_key=args.api_key, faults=faults, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(FakeEmbeddings.main())
