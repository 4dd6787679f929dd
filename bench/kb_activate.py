"""Event-loop lag while the admin API activates a large KB version (issue 11: a 50k-chunk activate
blocked the loop 727 ms). Standalone, in one process, loopback only:

    python -m bench.kb_activate [--chunks 50000] [--repeat 3]

Builds two synthetic versions (the same 50k chunks and random vectors: no embedding), starts the gateway
on loopback, and switches between them through ``POST /admin/kb/activate`` while a probe task measures
how late the event loop wakes a 1 ms sleep. The baseline is the same probe over an idle second in the
same run; the report is the max lag during each activation and its ratio to the idle max.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from bench import synthetic

TOKEN = "bench-admin-token"


class _Seeded:
    """Stands in for the configured embedder at build time (same model id, so the gateway accepts the
    vectors): every vector comes from ``seed_vectors``."""

    def __init__(self, model_id: str) -> None:
        self.name = self.model_id = model_id
        self.dim = synthetic.DIM

    async def embed_passages(self, texts: list[str]) -> list[np.ndarray]:
        raise AssertionError("every vector is seeded")


async def _build(work: Path, n: int, model_id: str) -> tuple[Path, str, str]:
    from gateway.kb import KnowledgeBase

    corpus = work / "corpus"
    synthetic.write_corpus(corpus, n)
    chunks = synthetic.read_chunks(corpus, n)
    vectors = np.load(corpus / synthetic.VECTORS_FILE)
    data = work / "data"
    kb = KnowledgeBase(data / "kb")
    a = await kb.create_version(chunks, embedder=_Seeded(model_id), activate=True, label="bench a",
                                seed_vectors={c.id: vectors[i] for i, c in enumerate(chunks)})
    b = a[:-6] + "bbbbbb"  # a second version: a copy under its own directory name
    shutil.copytree(kb.versions_dir / a, kb.versions_dir / b)
    manifest = json.loads((kb.versions_dir / b / "manifest.json").read_text())
    manifest["version"] = b
    (kb.versions_dir / b / "manifest.json").write_text(json.dumps(manifest))
    return data, a, b


async def _probe(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - t - 0.001)


class _GcPauses:
    """The longest cyclic-GC pass (any thread: it holds the GIL, so it stalls the loop too)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._t0)


async def _with_probe(coro: Any) -> tuple[Any, float, float, float]:
    stop, lags = asyncio.Event(), []
    task = asyncio.create_task(_probe(stop, lags))
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    try:
        result = await coro
    finally:
        gc.callbacks.remove(pauses)
    took = time.perf_counter() - t0
    stop.set()
    await task
    return result, max(lags, default=0.0), took, pauses.longest


async def run(n: int, repeat: int) -> dict[str, Any]:
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.state import STATE

    from gateway.kb import embedder_id
    from gateway.upstreams.factory import build_local_embedder

    work = Path(tempfile.mkdtemp(prefix="bench-kb-activate-"))
    try:
        settings = load_settings(None, env={}, overrides={
            "server.data_dir": str(work / "data"), "auth.admin_token": TOKEN, "telemetry.statsd_enabled": False,
            "logging.level": "WARNING", "kb.auto_ingest_sample": False})
        t0 = time.perf_counter()
        data, a, b = await _build(work, n, embedder_id(build_local_embedder(settings)))
        build_s = time.perf_counter() - t0
        app = create_app(settings, configure_logging=False)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(app[STATE].ready.wait(), 300)
            _, idle_lag, _, _ = await _with_probe(asyncio.sleep(1.0))
            rows = []
            async with aiohttp.ClientSession() as http:
                async def activate(version: str) -> int:
                    async with http.post(f"http://127.0.0.1:{port}/admin/kb/activate", json={"version": version},
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                        await r.read()
                        return r.status
                for i in range(repeat * 2):
                    target = b if i % 2 == 0 else a
                    status, lag, took, gc_pause = await _with_probe(activate(target))
                    if status != 200:
                        raise RuntimeError(f"activate {target}: HTTP {status}")
                    rows.append({"max_lag_ms": round(lag * 1e3, 1), "activate_s": round(took, 3),
                                 "longest_gc_pass_ms": round(gc_pause * 1e3, 1)})
        finally:
            await runner.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lags = [r["max_lag_ms"] for r in rows]
    return {"chunks": n, "build_s": round(build_s, 1), "idle_max_lag_ms": round(idle_lag * 1e3, 1),
            "activate_max_lag_ms": max(lags), "activate_median_max_lag_ms": statistics.median(lags),
            "lag_ratio_to_idle": round(max(lags) / max(idle_lag * 1e3, 0.1), 1),
            "activate_s_median": statistics.median(r["activate_s"] for r in rows), "runs": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kb_activate", description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3, help="round trips a→b→a")
    args = ap.parse_args(argv)
    out = asyncio.run(run(args.chunks, args.repeat))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
