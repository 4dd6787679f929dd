"""Section 8 — /v1/messages as a gateway: pass-through cost, stream buffering, memory per open stream.

- JSON and SSE pass-through vs the floor's minimal aiohttp byte pass-through (bench/floor.py), c = 1, 4,
  32, interleaved in the same run: throughput ratio and added p50.
- Time to first content through the gateway with ``llm.stream_buffer: first_content`` (default) vs
  ``full``, against a paced stand-in model (the floor's TTFT as the reference).
- Memory per open stream: gateway RSS while N paced streams are open at once, minus the idle RSS.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.context import LLM_KEY, Context
from bench.overhead import CONCURRENCY, SLICES, SLICES_QUICK, _compare, gateway_overrides, ingest
from bench.procs import RssSampler, http_json, log
from bench.stats import ratio, summarize_ms

MODEL = "claude-sonnet-4-6"
PACED = "claude-paced-bench"  # a stand-in model whose stream is paced (control route, per model)
HEADERS = {"x-api-key": LLM_KEY, "anthropic-version": "2023-06-01"}
PROMPT = [{"role": "user", "content": "[1] csv.DictReader reads rows as dicts. How do I read a CSV?"}]


def _body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "stream": stream, "messages": PROMPT}


async def _first_content_ms(url: str, model: str, n: int) -> dict[str, Any]:
    """Sequential streams: ms from sending to the first ``content_block_delta`` bytes, and whole-stream ms."""
    import aiohttp

    first, whole = [], []
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.post(url, json=_body(model, True)) as resp:
                seen = None
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    if seen is None and b"content_block_delta" in buf:
                        seen = time.perf_counter()
                if resp.status != 200 or b"message_stop" not in buf:
                    raise RuntimeError(f"stream through {url} did not complete: {resp.status}")
            first.append(((seen or time.perf_counter()) - t0) * 1e3)
            whole.append((time.perf_counter() - t0) * 1e3)
    return {"first_content": summarize_ms(first), "whole_stream": summarize_ms(whole)}


async def _hold_streams(url: str, model: str, n: int) -> list[int]:
    import aiohttp

    async with aiohttp.ClientSession(headers=HEADERS, connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one() -> int:
            async with http.post(url, json=_body(model, True)) as resp:
                body = await resp.read()
                return resp.status if b"message_stop" in body else -1
        return list(await asyncio.gather(*(one() for _ in range(n))))


def run(ctx: Context) -> dict[str, Any]:
    standins = ctx.standins()
    stub = standins.info["anthropic_url"]
    data_dir = ctx.work / "messages-data"
    overrides = gateway_overrides(ctx, str(data_dir))
    log("section 8: ingesting the sample corpus into the Weaviate stand-in (stand-in embedder)")
    ingest(ctx, overrides)
    out: dict[str, Any] = {"json": [], "stream": []}
    slices = SLICES_QUICK if ctx.quick else SLICES
    # Pass-through points: both sides call the canned upstream (bench/canned.py, the stand-in's recorded
    # bytes at ~10 µs CPU per request), so the Python stand-in's own cost does not weigh on either side.
    canned, canned_url = ctx.anthropic()  # RAG_BENCH_UPSTREAM=standins: the Python stand-in instead
    floor_c = ctx.floor("bench")
    gateway = ctx.gateway("gateway-messages-canned", {**overrides, "llm.base_url": canned_url})
    try:
        gw_url = f"http://127.0.0.1:{gateway.info['port']}/v1/messages"
        floor_url = f"http://127.0.0.1:{floor_c.info['port']}/v1/messages"
        for kind, stream in (("json", False), ("stream", True)):
            for c in CONCURRENCY:
                log(f"  /v1/messages {kind} c={c}: floor and gateway, {slices} interleaved slices each")
                sides = {"floor": (floor_url, {"server": floor_c, "upstream": canned}),
                         "gateway": (gw_url, {"server": gateway, "upstream": canned}),
                         "floor_lean": (floor_url + "_lean", {"server": floor_c, "upstream": canned})}
                row: dict[str, Any] = {"concurrency": c, **ctx.compare(sides, [_body(MODEL, stream)], c,
                                                                      slices=slices, headers=HEADERS)}
                row.update(_compare(row["floor"], row["gateway"]))
                row["ratio_vs_floor_lean"] = round(ratio(row["gateway"]["rps"], row["floor_lean"]["rps"]) or 0.0, 3)
                for side in ("floor", "gateway", "floor_lean"):
                    row[side].pop("raw_ms", None)
                out[kind].append(row)
    finally:
        ctx.stop(gateway)

    floor = ctx.floor()
    gateway = ctx.gateway("gateway-messages", overrides)
    try:
        gw_url = f"http://127.0.0.1:{gateway.info['port']}/v1/messages"
        floor_url = f"http://127.0.0.1:{floor.info['port']}/v1/messages"
        # A paced model: 8 deltas 50 ms apart (the stand-in's bench reply), first content at once.
        http_json("PUT", f"{stub}/__faults__?model={PACED}", {"event_interval_s": 0.05})
        n = 5 if ctx.quick else 20
        log(f"  time to first content, {n} sequential paced streams per side")
        ttft = {"floor": asyncio.run(_first_content_ms(floor_url, PACED, n)),
                "first_content": asyncio.run(_first_content_ms(gw_url, PACED, n))}

        streams = 50 if ctx.quick else 500
        http_json("PUT", f"{stub}/__faults__?model={PACED}", {"event_interval_s": 0.5})
        idle = gateway.rss_mb()
        log(f"  memory: {streams} paced streams (~4 s each) open at once")
        with RssSampler(gateway) as sampler:
            statuses = asyncio.run(_hold_streams(gw_url, PACED, streams))
        peak = sampler.peak_mb
        out["memory"] = {"streams": streams, "completed": statuses.count(200), "idle_rss_mb": round(idle, 1),
                         "peak_rss_mb": round(peak, 1),
                         "kb_per_open_stream": round((peak - idle) * 1024 / streams, 1)}
    finally:
        ctx.stop(gateway)
        http_json("PUT", f"{stub}/__faults__?model={PACED}", {})

    full = ctx.gateway("gateway-messages-full", {**overrides, "llm.stream_buffer": "full"})
    try:
        http_json("PUT", f"{stub}/__faults__?model={PACED}", {"event_interval_s": 0.05})
        ttft["full"] = asyncio.run(_first_content_ms(f"http://127.0.0.1:{full.info['port']}/v1/messages", PACED, n))
    finally:
        ctx.stop(full)
        http_json("PUT", f"{stub}/__faults__?model={PACED}", {})
    fc, fu = ttft["first_content"]["first_content"]["p50_ms"], ttft["full"]["first_content"]["p50_ms"]
    out["ttft"] = {**ttft, "full_over_first_content_p50": round(fu / fc, 2) if fc else None,
                   "added_p50_ms_by_full": round(fu - fc, 1)}
    out["slices"] = slices
    out["upstream"] = ctx.anthropic_label()
    out["notes"] = [
        f"Each pass-through point: {ctx.duration_s:g} s per side in {slices} alternating slices; both sides call "
        f"the same Anthropic upstream, {out['upstream']} (canned: the stand-in's recorded JSON/SSE bytes, "
        "answered at once); one load generator (wrk when installed, see the header); gateway with its defaults (JSON "
        "access log, metrics). TTFT and memory use the Python stand-in (its paced model).",
        "TTFT: the stand-in's paced model sends its 8 text deltas 50 ms apart; `full` holds the whole answer, "
        "so its first content arrives with the last delta.",
        "Memory: the gateway's peak RSS (psutil, 0.1 s samples) while every stream is open, minus its RSS before.",
    ]
    return out


def targets(sec: dict[str, Any]) -> list[tuple[str, float | None, float, str, str, str]]:
    """(name, measured, limit, op, unit, where) for report.targets."""
    rows = sec.get("json") or []
    stream_rows = sec.get("stream") or []
    out = []
    both = rows + stream_rows
    if both:
        worst = min(both, key=lambda r: r["throughput_ratio"])
        kind = "json" if worst in rows else "stream"
        per_c = "; ".join(f"{k} " + ", ".join(f"c={r['concurrency']}: {r['throughput_ratio']:.2f}×" for r in rs)
                          for k, rs in (("json", rows), ("stream", stream_rows)) if rs)
        out.append(("/v1/messages pass-through ≥ 0.8× a minimal aiohttp pass-through", worst["throughput_ratio"],
                    0.8, ">=", "× floor", f"worst ({kind} c={worst['concurrency']}) of {per_c}"))
        c1 = [r for r in both if r["concurrency"] == 1]
        if c1:
            worst1 = max(c1, key=lambda r: r["added_p50_ms"])
            out.append(("/v1/messages added p50 at c=1 ≤ 0.3 ms", worst1["added_p50_ms"], 0.3, "<=", "ms",
                        "worst of json and stream at c=1"))
    else:
        out += [("/v1/messages pass-through ≥ 0.8× a minimal aiohttp pass-through", None, 0.8, ">=", "× floor",
                 "section messages"),
                ("/v1/messages added p50 at c=1 ≤ 0.3 ms", None, 0.3, "<=", "ms", "section messages")]
    return out


def _f(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x)


def _lean(r: dict[str, Any]) -> str:
    lean = r.get("floor_lean")
    if not lean:
        return "— | —"
    return (f"{_f(lean['rps'], 0)} ({_f(lean['cpu_ms_per_req']['server'])}) | "
            f"{_f(r.get('ratio_vs_floor_lean'))}×")


def markdown(sec: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for kind in ("json", "stream"):
        rows = sec.get(kind) or []
        if not rows:
            continue
        lines += [f"**POST /v1/messages, {kind}** (floor: a minimal aiohttp byte pass-through)", "",
                  "| c | floor req/s | gateway req/s | gateway / floor | floor p50 ms | gateway p50 ms | added p50 ms | "
                  "added p99 ms | CPU ms/req floor → gateway | non-200 / errors | lean floor req/s (CPU ms) | "
                  "gateway / lean floor |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
        for r in rows:
            fl, gw = r["floor"], r["gateway"]
            bad = {f"{side} {s}": n for side, x in (("floor", fl), ("gw", gw)) for s, n in x["status"].items()
                   if s != "200"}
            bad.update({f"{side} {k}": v for side, x in (("floor", fl), ("gw", gw)) for k, v in x["errors"].items()})
            lines.append(f"| {r['concurrency']} | {_f(fl['rps'], 0)} | {_f(gw['rps'], 0)} | {r['throughput_ratio']:.2f}× | "
                         f"{_f(fl['p50_ms'])} | {_f(gw['p50_ms'])} | {_f(r['added_p50_ms'])} | {_f(r['added_p99_ms'])} | "
                         f"{_f(fl['cpu_ms_per_req']['server'])} → {_f(gw['cpu_ms_per_req']['server'])} | "
                         f"{', '.join(f'{k}: {v}' for k, v in bad.items()) or '0'} | {_lean(r)} |")
        lines.append("")
    if any("floor_lean" in r for kind in ("json", "stream") for r in sec.get(kind) or []):
        lines += ["The target is judged against the aiohttp floor, as the issue asks. The lean floor is the same "
                  "byte pass-through over the gateway's own upstream client (bench/floor.py `/v1/messages_lean`, "
                  "gateway/upstreams/http1.py); gateway / lean floor is what the gateway costs beyond its transport.", ""]
    t = sec.get("ttft")
    if t:
        lines += ["**Time to first content** (paced stand-in model: 8 deltas, 50 ms apart)", "",
                  "| path | first content p50 ms | p99 ms | whole stream p50 ms |", "|---|---:|---:|---:|"]
        for name in ("floor", "first_content", "full"):
            if name in t:
                fc, wh = t[name]["first_content"], t[name]["whole_stream"]
                label = name if name == "floor" else f"gateway, stream_buffer: {name}"
                lines.append(f"| {label} | {_f(fc['p50_ms'])} | {_f(fc['p99_ms'])} | {_f(wh['p50_ms'])} |")
        lines += ["", f"`full` adds {_f(t.get('added_p50_ms_by_full'), 1)} ms to the first content at p50 "
                      f"({_f(t.get('full_over_first_content_p50'))}× first_content).", ""]
    m = sec.get("memory")
    if m:
        lines += [f"**Memory per open stream**: {m['streams']} paced streams open at once ({m['completed']} completed): "
                  f"gateway RSS {_f(m['idle_rss_mb'], 1)} → {_f(m['peak_rss_mb'], 1)} MB, "
                  f"**{_f(m['kb_per_open_stream'], 1)} KB per open stream**.", ""]
    lines += [f"- {n}" for n in sec.get("notes", [])]
    return lines
