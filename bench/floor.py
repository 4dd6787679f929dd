"""The Python floor: a minimal aiohttp server making the same upstream calls as the gateway, and nothing else.

    python -m bench.floor --embeddings-url URL --weaviate-http-port P --weaviate-grpc-port P
                          --anthropic-url URL --collection NAME

``POST /v1/query``: embeddings POST (aiohttp) → Weaviate ``near_vector`` (the same async
weaviate-client, over gRPC) → Anthropic ``messages.create`` (the same SDK, ``max_retries=0``, over the SDK's aiohttp transport) →
JSON answer. No deadline, retry, breaker, bulkhead, cache, validation, logging or metrics: the cost
of the libraries alone, which is what the gateway's overhead is measured against.
``POST /v1/messages``: a byte pass-through to the Anthropic stand-in (floor for the gateway's proxy).
``POST /v1/query_keyword`` (with ``--kb-dir``): the keyword path done minimally — BM25 over the KB's own
keyword index (the same tantivy index and ``KeywordIndex.search``), the same prompt shape, the same SDK
``messages.create`` call, a JSON answer. Floor for ``/v1/query`` when the vector DB is down: what the
libraries cost on that path, without the gateway's deadline, guards, cache, contract, logs or metrics.
``POST /v1/messages_lean``: the same byte pass-through over the gateway's lean HTTP/1.1 client
(gateway/upstreams/http1.py, ``llm.transport: h1``) instead of aiohttp's ClientSession — a reference
with the gateway's own transport, so the report can say what the gateway costs beyond it.
``POST /reject``: an immediate 429 JSON answer (floor for the rate limiter's rejection path).
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from bench.child import emit, stop_event

EMBED_MODEL = "text-embedding-3-small"
LLM_MODEL = "claude-sonnet-4-6"
SYSTEM = ("Answer the question using only the numbered context passages. Cite passages like [1]. "
          "If the context does not contain the answer, say so.")
FORWARD = ("anthropic-version", "anthropic-beta", "content-type", "accept", "x-api-key", "authorization")
HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


def build_app(args: argparse.Namespace) -> web.Application:
    import anthropic
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Timeout
    from weaviate.classes.query import MetadataQuery

    app = web.Application()
    clients: dict = {}

    async def startup(app: web.Application) -> None:
        clients["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        from gateway.upstreams.http1 import H1Transport
        clients["h1"] = H1Transport(connect_s=5.0)
        clients["llm"] = anthropic.AsyncAnthropic(api_key="sk-ant-bench-0123456789", base_url=args.anthropic_url,
                                                  max_retries=0, timeout=30,
                                                  http_client=anthropic.DefaultAioHttpClient())
        wv = weaviate.use_async_with_custom(
            http_host="127.0.0.1", http_port=args.weaviate_http_port, http_secure=False,
            grpc_host="127.0.0.1", grpc_port=args.weaviate_grpc_port, grpc_secure=False,
            additional_config=AdditionalConfig(timeout=Timeout(init=5, query=5, insert=30)), skip_init_checks=True)
        await wv.connect()
        clients["weaviate"] = wv
        clients["collection"] = wv.collections.use(args.collection)
        if args.kb_dir:
            from fallback.bm25 import KeywordIndex
            root = Path(args.kb_dir) / "kb"
            active = json.loads((root / "ACTIVE").read_text())["version"]
            clients["keyword"] = KeywordIndex.load(root / "versions" / active / "keyword")

    async def cleanup(app: web.Application) -> None:
        await clients["weaviate"].close()
        await clients["llm"].close()
        await clients["http"].close()
        await clients["h1"].close()

    async def query(request: web.Request) -> web.Response:
        body = await request.json()
        question, top_k = body["query"], int(body.get("top_k") or 5)
        async with clients["http"].post(args.embeddings_url + "/embeddings",
                                        json={"model": EMBED_MODEL, "input": [question],
                                              "encoding_format": "float"}) as resp:
            data = await resp.json()
        vector = np.asarray(data["data"][0]["embedding"], dtype=np.float32)
        vector /= max(float(np.linalg.norm(vector)), 1e-12)
        result = await clients["collection"].query.near_vector(
            near_vector=vector.tolist(), limit=top_k, return_metadata=MetadataQuery(distance=True))
        passages = [f"[{i}] {o.properties.get('title', '')} — {o.properties.get('text', '')}"
                    for i, o in enumerate(result.objects, 1)]
        prompt = "Context passages:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}"
        msg = await clients["llm"].messages.create(model=LLM_MODEL, max_tokens=512, system=SYSTEM,
                                                   messages=[{"role": "user", "content": prompt}])
        answer = "".join(b.text for b in msg.content if b.type == "text")
        sources = [{"id": str(o.uuid), "title": o.properties.get("title", ""),
                    "source": o.properties.get("source", ""), "score": 1.0 - (o.metadata.distance or 0.0)}
                   for o in result.objects]
        return web.json_response({"answer": answer, "mode": "full", "sources": sources})

    async def messages(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD}
        async with clients["http"].post(args.anthropic_url + "/v1/messages", data=raw, headers=headers) as up:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    out.headers[k] = v
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
        await out.write_eof()
        return out

    async def query_keyword(request: web.Request) -> web.Response:
        body = await request.json()
        question, top_k = body["query"], int(body.get("top_k") or 5)
        chunks = clients["keyword"].search(question, top_k)
        passages = [f"[{i}] {c.title} — {c.text}" for i, c in enumerate(chunks, 1)]
        prompt = "Context passages:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}"
        msg = await clients["llm"].messages.create(model=LLM_MODEL, max_tokens=512, system=SYSTEM,
                                                   messages=[{"role": "user", "content": prompt}])
        answer = "".join(b.text for b in msg.content if b.type == "text")
        sources = [{"id": c.id, "title": c.title, "source": c.source} for c in chunks]
        return web.json_response({"answer": answer, "mode": "keyword", "sources": sources})

    async def messages_lean(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD}
        up = await clients["h1"].request("POST", args.anthropic_url + "/v1/messages", raw, headers)
        try:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    out.headers[k] = v
            await out.prepare(request)
            while chunk := await up.content.readany():
                await out.write(chunk)
        except BaseException:
            up.close()
            raise
        up.release()
        await out.write_eof()
        return out

    async def reject(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"type": "rate_limited", "message": "rate limit exceeded"}},
                                 status=429, headers={"Retry-After": "1"})

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_post("/v1/query", query)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages_lean", messages_lean)
    app.router.add_post("/v1/query_keyword", query_keyword)
    app.router.add_post("/reject", reject)
    return app


async def main(args: argparse.Namespace) -> None:
    stop = stop_event()
    runner = web.AppRunner(build_app(args), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    emit(event="ready", port=int(runner.addresses[0][1]))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    ap.add_argument("--weaviate-http-port", type=int, required=True)
    ap.add_argument("--weaviate-grpc-port", type=int, required=True)
    ap.add_argument("--anthropic-url", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--kb-dir", default="", help="a data dir with an active KB version: serves /v1/query_keyword")
    asyncio.run(main(ap.parse_args()))
