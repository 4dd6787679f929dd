"""What metric emission costs a request, against the cost of the cheapest request there is.

    python -m bench.metrics_overhead [--rounds 20000] [--requests 1000]

1. **Telemetry per request** (µs): the exact facade calls one /v1/query makes on a normal path and on a
   degraded one (breaker short-circuit, keyword fallback, LLM retry, fallback model), against a
   ``Telemetry`` with both sinks on: DogStatsD (buffered + aggregated, background sender) to a real
   UDP socket drained by a thread (a stand-in agent), and Prometheus.
2. **Pass-through request** (µs): one sequential keep-alive request over loopback to a minimal aiohttp
   handler, client included, in the same process and run.
3. **A/B** (µs): the same handler behind a middleware making the degraded path's calls, once on a
   real ``Telemetry`` (exporter thread running, as in production) and once on a no-op facade (the
   calls' own Python cost); batches of all three servers interleaved. Noisier (a difference of two
   ~125 µs numbers); the headline ratio is (1) / (2), the target is < 3 %.

Writes bench/results/metrics_overhead.json and prints a Markdown table. Runs in ~10 s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

from aiohttp import ClientSession, TCPConnector, web

from gateway.config import TelemetryConfig
from gateway.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "metrics_overhead.json"
ROUTE = "/v1/query"
TARGET = 0.03


def normal_request(t: Telemetry) -> None:
    """Calls made by a full answer: cache miss, embed + vector search + LLM attempts."""
    t.request_started(ROUTE)
    t.cache_result("miss")
    t.on_attempt("embedder", "success", 0.008)
    t.on_attempt("vector_db", "success", 0.002)
    t.on_attempt("llm", "success", 0.8)
    t.request_finished(ROUTE, 200, "full", False, 812.0)


def degraded_request(t: Telemetry) -> None:
    """Calls made by a degraded answer: vector DB short-circuited → BM25, LLM retried then fallback model."""
    t.request_started(ROUTE)
    t.cache_result("miss")
    t.on_attempt("embedder", "success", 0.008)
    t.on_short_circuit("vector_db")
    t.degradation("vector_db", "breaker_open")
    t.keyword_search(1.2, 5)
    t.on_attempt("llm", "error", 0.05)
    t.on_retry("llm", "error")
    t.on_attempt("llm", "error", 0.05)
    t.degradation("llm", "error")
    t.on_attempt("llm_fallback", "success", 0.6)
    t.request_finished(ROUTE, 200, "keyword_fallback", True, 900.0)


PROFILES: dict[str, Callable[[Telemetry], None]] = {"normal": normal_request, "degraded": degraded_request}


class DrainingAgent:
    """A UDP socket read by a daemon thread, so datagrams are consumed as a real agent would."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65535)
                self.datagrams += 1
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def time_profile(t: Telemetry, fn: Callable[[Telemetry], None], rounds: int, repeats: int = 7) -> dict:
    """µs per request: ``hot`` = the calls alone (what the request waits for); ``all_in`` = the calls
    plus exporting them (Prometheus fold, DogStatsD formatting and sends), which the exporter thread
    does on the same CPU and GIL, once a second in production."""
    for _ in range(min(rounds, 2000)):  # warm: series caches, socket
        fn(t)
    t.flush()
    hot, all_in = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn(t)
        t1 = time.perf_counter()
        t.flush()
        t2 = time.perf_counter()
        hot.append((t1 - t0) / rounds * 1e6)
        all_in.append((t2 - t0) / rounds * 1e6)
    # Minimum over repeats, like the pass-through: interference from other processes only adds time.
    return {"calls": _count_calls(fn), "hot_us": round(min(hot), 3), "all_in_us": round(min(all_in), 3),
            "all_in_us_median": round(statistics.median(all_in), 3), "repeats": repeats}


def _count_calls(fn: Callable[[Telemetry], None]) -> int:
    calls = 0

    class Counting:
        def __getattr__(self, name: str):
            def call(*a, **k):
                nonlocal calls
                calls += 1
            return call

    fn(Counting())  # type: ignore[arg-type]
    return calls


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1/query"


async def _handler(request: web.Request) -> web.Response:
    return web.json_response({"answer": "ok", "mode": "full"})


class NoopTelemetry:
    """The facade before metrics existed: the same calls, doing nothing (the A/B baseline)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _noop


def _noop(*args: object, **kwargs: object) -> None:
    return None


def _app(telemetry: Telemetry | NoopTelemetry | None) -> web.Application:
    middlewares = []
    if telemetry is not None:
        @web.middleware
        async def metrics(request: web.Request, handler):
            degraded_request(telemetry)  # type: ignore[arg-type]
            return await handler(request)
        middlewares.append(metrics)
    app = web.Application(middlewares=middlewares)
    app.router.add_post("/v1/query", _handler)
    return app


async def time_requests(telemetry: Telemetry, requests: int, batches: int = 12) -> dict:
    """Median µs per sequential keep-alive request to: a bare handler (the pass-through), and the
    same handler behind a middleware making the degraded calls on a no-op facade / on Telemetry."""
    apps = {"passthrough": _app(None), "noop": _app(NoopTelemetry()), "telemetry": _app(telemetry)}
    servers = {name: await _serve(app) for name, app in apps.items()}
    body = {"query": "What temperature should water be for green tea?"}
    results: dict[str, list[float]] = {name: [] for name in apps}
    try:
        async with ClientSession(connector=TCPConnector(limit=1)) as session:
            async def batch(url: str, n: int) -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    async with session.post(url, json=body) as resp:
                        await resp.read()
                return (time.perf_counter() - t0) / n * 1e6

            for _, url in servers.values():
                await batch(url, 200)
            for _ in range(batches):  # interleaved, so drift hits all alike
                for name, (_, url) in servers.items():
                    results[name].append(await batch(url, requests))
    finally:
        for runner, _ in servers.values():
            await runner.cleanup()
    # Minimum over batches: on a shared machine other processes only ever add time, so the fastest
    # batch is the closest to the true cost (and the smallest denominator for the ratio).
    best = {name: min(v) for name, v in results.items()}
    return {"passthrough_us_min": round(best["passthrough"], 2),
            "passthrough_us_median": round(statistics.median(results["passthrough"]), 2),
            "noop_facade_us_min": round(best["noop"], 2), "telemetry_us_min": round(best["telemetry"], 2),
            "ab_delta_us": round(best["telemetry"] - best["noop"], 2),
            "requests_per_batch": requests, "batches": batches}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20000, help="telemetry rounds per timing repeat")
    ap.add_argument("--requests", type=int, default=500, help="HTTP requests per batch")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = ap.parse_args()

    agent = DrainingAgent()
    # flush_interval_s=0: the timed loops export explicitly (all-in cost); the A/B runs the exporter
    # thread as production does.
    telemetry = Telemetry(TelemetryConfig(dogstatsd_url=agent.url, env="bench", version="bench"),
                          flush_interval_s=0)
    started = time.perf_counter()
    try:
        profiles = {name: time_profile(telemetry, fn, args.rounds) for name, fn in PROFILES.items()}
        telemetry.close_sync()
        threaded = Telemetry(TelemetryConfig(dogstatsd_url=agent.url, env="bench", version="bench"))
        try:
            http = asyncio.run(time_requests(threaded, args.requests))
        finally:
            threaded.close_sync()
    finally:
        telemetry.close_sync()
        agent.close()
    passthrough = http["passthrough_us_min"]
    for p in profiles.values():
        p["ratio_to_passthrough"] = round(p["all_in_us"] / passthrough, 4)
    result = {
        "what": "telemetry cost per request vs a pass-through aiohttp request over loopback (same run)",
        "python": platform.python_version(), "machine": platform.machine(),
        "profiles": profiles, "http": http, "target_ratio": TARGET,
        "datagrams_received": agent.datagrams, "seconds": round(time.perf_counter() - started, 1),
    }
    print("| profile | telemetry calls | request path µs | all-in µs (incl. export) | pass-through request µs "
          "| ratio (all-in) |")
    print("|---|---|---|---|---|---|")
    for name, p in profiles.items():
        print(f"| {name} | {p['calls']} | {p['hot_us']:.2f} | {p['all_in_us']:.2f} | {passthrough:.1f} | "
              f"{p['ratio_to_passthrough']:.2%} |")
    print(f"\nA/B over HTTP, degraded profile's calls in a middleware: {http['telemetry_us_min']:.1f} µs on "
          f"Telemetry vs {http['noop_facade_us_min']:.1f} µs on a no-op facade → {http['ab_delta_us']:+.1f} µs "
          f"per request ({http['ab_delta_us'] / passthrough:+.2%} of the pass-through)")
    print(f"agent received {agent.datagrams} datagrams; run took {result['seconds']} s")
    worst = max(p["ratio_to_passthrough"] for p in profiles.values())
    print(f"target < {TARGET:.0%}: {'met' if worst < TARGET else 'NOT met'} (worst {worst:.2%})")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
