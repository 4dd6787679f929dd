"""``rag-sidecar serve --workers N`` as a benchmark child: ``python -m bench.serve_proc``.

    python -m bench.serve_proc --workers N --overrides '{"server.data_dir": "...", ...}'

Starts the real CLI (supervisor + N workers) on a free loopback port with settings from ``--overrides``
only (passed as ``RAG_SIDECAR__…`` variables; the caller's own are dropped), waits until every worker
answered ``/readyz`` on fresh connections, prints ``{"event": "ready", "port", "pids"}``, and on stdin EOF
or SIGTERM sends SIGTERM to the supervisor (which drains its workers) and waits for it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

from bench.child import emit, stop_event


def env_of(overrides: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("RAG_SIDECAR") or k.startswith("ANTHROPIC_") or k.startswith("DD_"))}
    for key, value in overrides.items():
        env["RAG_SIDECAR__" + key.replace(".", "__").upper()] = json.dumps(value) if not isinstance(value, str) else value
    return env


async def main(workers: int, overrides: dict, ready_timeout_s: float) -> int:
    import aiohttp

    stop = stop_event()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers),  # noqa: ASYNC220
                             "--port", str(port)], env=env_of(overrides), stdin=subprocess.DEVNULL)
    pids: dict[int, int] = {}
    deadline = time.monotonic() + ready_timeout_s
    try:
        while len(pids) < workers:
            if proc.poll() is not None or time.monotonic() > deadline or stop.is_set():
                emit(event="failed", stage="workers not ready", error=f"ready: {sorted(pids)}")
                return 1
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            w = (await r.json()).get("worker") or {"index": 0, "pid": proc.pid}
                            pids[w["index"]] = w["pid"]
                            continue
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        emit(event="ready", port=port, pids=[pids[i] for i in sorted(pids)], supervisor=proc.pid)
        await stop.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--overrides", default="{}", help="dotted config keys → values, as JSON")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    args = ap.parse_args()
    raise SystemExit(asyncio.run(main(args.workers, json.loads(args.overrides), args.ready_timeout)))
