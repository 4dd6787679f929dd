"""The gateway in its own process, exactly as ``rag-sidecar serve`` builds it: ``python -m bench.gateway_proc``.

    python -m bench.gateway_proc --overrides '{"server.data_dir": "...", ...}' [--ready-timeout 300]

Settings come only from ``--overrides`` (the caller's environment is ignored, so a run is
reproducible). Logging is the gateway's own (JSON on stderr, which the runner sends to a file).
Prints ``{"event": "listening", "port"}``, progress lines while the KB loads or ingests, then
``{"event": "ready", ...}``; serves until stdin closes or SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from aiohttp import web

from bench.child import emit, stop_event


async def main(overrides: dict, ready_timeout_s: float) -> int:
    from gateway import heap
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.state import STATE

    stop = stop_event()
    settings = load_settings(None, env={}, overrides=overrides)
    heap.enable(settings.server.gc_freeze, settings.server.gc_gen0_threshold)  # as `rag-sidecar serve` does
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    emit(event="listening", port=port, pid=os.getpid())
    state = app[STATE]
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not state.ready.is_set():
            if state.startup_stage == "failed" or time.monotonic() > deadline or stop.is_set():
                emit(event="failed", stage=state.startup_stage, error=state.kb_error)
                return 1
            try:
                await asyncio.wait_for(state.ready.wait(), timeout=2.0)
            except TimeoutError:
                emit(event="progress", stage=state.startup_stage, **state.startup_progress)
        kb = state.kb
        emit(event="ready", port=port, kb_version=kb.version if kb else None,
             chunks=len(kb.chunks) if kb else 0, llm=settings.llm.effective_backend,
             vector_store=settings.vector_store.backend, embedder=settings.embedder.backend)
        await stop.wait()
        return 0
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overrides", default="{}", help="dotted config keys → values, as JSON")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the KB")
    args = ap.parse_args()
    raise SystemExit(asyncio.run(main(json.loads(args.overrides), args.ready_timeout)))
