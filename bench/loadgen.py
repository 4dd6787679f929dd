"""A bounded async HTTP load generator that runs in its own process.

The generator must not share an event loop (or a GIL) with the server it measures, so it lives in a
``spawn``-ed child process fed one :class:`LoadSpec` at a time over a pipe. Each point is closed-loop:
``concurrency`` workers send a request, wait for the answer, send the next. Every point is bounded in
count (``max_requests``) and in time (``warmup_s + duration_s``, plus one request timeout for the
requests in flight at the end). Requests *started* during the warm-up are not counted; throughput is
the measured requests over the time from the end of the warm-up to the last measured answer.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import summarize_ms


@dataclass
class LoadSpec:
    url: str
    bodies: list[Any]  # JSON bodies, cycled in order
    concurrency: int
    duration_s: float
    warmup_s: float = 1.0
    max_requests: int = 500_000
    unique_field: str | None = None  # append " #n" to this body field: every request is a new query
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 15.0
    server_timing: tuple[str, ...] = ()  # Server-Timing entries to collect (ms), e.g. "keyword_search"
    return_raw: bool = False  # include every latency (ms), for merging interleaved slices


def _body(spec: LoadSpec, n: int) -> bytes:
    body = spec.bodies[n % len(spec.bodies)]
    if spec.unique_field and isinstance(body, dict):
        body = {**body, spec.unique_field: f"{body[spec.unique_field]} #{n}"}
    return json.dumps(body).encode()


def _server_timing(header: str | None, wanted: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        if name in wanted and rest.startswith("dur="):
            try:
                out[name] = float(rest[4:])
            except ValueError:
                pass
    return out


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Drive ``spec.url`` with POSTs; returns throughput, latency summary, statuses, modes, errors."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency)
    headers = {"Content-Type": "application/json", **spec.headers}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    modes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    timings: dict[str, list[float]] = {name: [] for name in spec.server_timing}
    counter = itertools.count()
    t0 = time.perf_counter()
    t_warm = t0 + spec.warmup_s
    t_end = t_warm + spec.duration_s
    last_end = t_warm
    warmup_requests = 0
    degraded = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal last_end, warmup_requests, degraded
        while True:
            start = time.perf_counter()
            n = next(counter)
            if start >= t_end or n >= spec.max_requests:
                return
            data = _body(spec, n)
            try:
                async with session.post(spec.url, data=data, headers=headers) as resp:
                    await resp.read()
                    status, rheaders = resp.status, resp.headers
            except Exception as exc:
                if start >= t_warm:
                    errors[type(exc).__name__] += 1
                continue
            end = time.perf_counter()
            if start < t_warm:
                warmup_requests += 1
                continue
            latencies.append((end - start) * 1e3)
            last_end = max(last_end, end)
            statuses[status] += 1
            mode = rheaders.get("X-RAG-Mode")
            if mode:
                modes[mode] += 1
            if rheaders.get("X-RAG-Degraded") == "true":
                degraded += 1
            if spec.server_timing:
                for name, ms in _server_timing(rheaders.get("Server-Timing"), spec.server_timing).items():
                    timings[name].append(ms)

    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as session:
        await asyncio.gather(*(worker(session) for _ in range(spec.concurrency)))
    window = max(last_end - t_warm, 1e-9)
    return {
        "concurrency": spec.concurrency, "requests": len(latencies), "warmup_requests": warmup_requests,
        "window_s": round(window, 3), "rps": round(len(latencies) / window, 1) if latencies else 0.0,
        **summarize_ms(latencies), "status": {str(k): v for k, v in sorted(statuses.items())},
        "modes": dict(modes), "degraded": degraded, "errors": dict(errors),
        "server_timing": {name: summarize_ms(v) for name, v in timings.items()},
        **({"raw_ms": latencies} if spec.return_raw else {}),
    }


def _child(conn: Any) -> None:
    while True:
        try:
            spec = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if spec is None:
            return
        try:
            result = asyncio.run(run_load(LoadSpec(**spec)))
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


class LoadGenerator:
    """The load-generating child process; ``run(spec)`` blocks until the point is done."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # daemon: the child dies with the runner even if the runner is killed mid-point.
        self._proc = ctx.Process(target=_child, args=(child,), daemon=True, name="bench-loadgen")
        self._proc.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def run(self, spec: LoadSpec) -> dict[str, Any]:
        """Run one point. Raises RuntimeError if the child fails or overruns its bound."""
        self._conn.send(asdict(spec))
        bound = spec.warmup_s + spec.duration_s + spec.timeout_s + 30.0
        if not self._conn.poll(bound):
            self.close()
            raise RuntimeError(f"load generator did not finish within {bound:.0f} s")
        result = self._conn.recv()
        if "error" in result:
            raise RuntimeError(f"load generator failed: {result['error']}")
        return result

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
