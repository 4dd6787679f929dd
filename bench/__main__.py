"""``python -m bench`` (``make bench``): the performance suite; writes bench/results/latest.{md,json} + PNGs.

    python -m bench [--quick] [--only overhead,rag,costs,scale,memory,workers,jobs,messages] [--duration S] [--out DIR]

Sections: overhead (gateway vs the Python floor), rag (embedded defaults, warm), costs (breaker-open
fast fail, rate-limit rejection, metrics emission), scale (keyword index + vector store, 1k→100k),
memory (gateway RSS with a 100k-chunk KB), workers (`serve --workers 1|2` vs the pass-through at c=32), jobs
(interactive p99 beside a running batch job), messages (/v1/messages pass-through vs a minimal aiohttp one,
stream buffering's cost on the first token, memory per open stream). Everything runs on loopback; every load point is bounded
in time and count; child processes stop with the runner. Progress goes to stderr, the target table
to stdout. ``--only`` merges the sections it runs into the existing results in ``--out``.

Harness: wrk drives the load points when installed (``make bench-tools``; ``RAG_BENCH_LOADGEN=python``
forces the Python generator, which also serves points that collect Server-Timing), and the /v1/messages
pass-through and scale-out points call a canned Anthropic upstream (bench/canned.py;
``RAG_BENCH_UPSTREAM=standins`` for the Python stand-in). The report's header says which ran.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import costs, jobs, memory, messages, overhead, rag, report, scale, scaleout
from bench.context import Context
from bench.machine import machine
from bench.procs import log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "overhead": overhead.run, "rag": rag.run, "costs": costs.run, "scale": scale.run, "memory": memory.run,
    "workers": scaleout.run, "jobs": jobs.run, "messages": messages.run}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="0.5 s per point, tiny corpus, small scale sizes: a smoke run, numbers indicative only")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--duration", type=float, default=None, help="seconds per load point (default 5, quick 0.5)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/latest.json/PNGs go")
    ap.add_argument("--no-cache", action="store_true",
                    help="do not reuse the embedded sample KB / synthetic corpus cached under ~/.cache")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    args.sections = only or list(SECTIONS)
    if args.duration is None:
        args.duration = 0.5 if args.quick else 5.0
    if args.duration <= 0:
        ap.error("--duration must be > 0")
    return args


def _previous(out: Path, quick: bool) -> dict[str, Any]:
    try:
        prev = json.loads((out / "latest.json").read_text())
    except (OSError, ValueError):
        return {}
    sections = prev.get("sections") or {}
    for sec in sections.values():
        sec.setdefault("_measured_at", prev.get("meta", {}).get("machine", {}).get("date_utc"))
        sec.setdefault("_quick", prev.get("meta", {}).get("quick"))
    return sections


def _write(out: Path, results: dict[str, Any]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("latest.json", json.dumps(results, indent=2, default=str) + "\n"),
                       ("latest.md", report.markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return report.plots(results, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    meta = {"machine": machine(), "quick": args.quick, "duration_s": args.duration,
            "warmup_s": 0.2 if args.quick else 1.0, "sections_run": args.sections, "argv": sys.argv[1:]}
    log(f"rag-sidecar bench: sections {', '.join(args.sections)}; {meta['duration_s']} s per point"
        f"{' (quick)' if args.quick else ''}; load average {meta['machine']['load_avg_at_start']}")
    work = Path(tempfile.mkdtemp(prefix="rag-sidecar-bench-"))
    ctx = Context(quick=args.quick, duration_s=args.duration, warmup_s=meta["warmup_s"], work=work,
                  use_cache=not args.no_cache)
    sections = _previous(args.out, args.quick) if len(args.sections) < len(SECTIONS) else {}
    failed = []
    try:
        for name in args.sections:
            t0 = time.perf_counter()
            load_before = round(os.getloadavg()[0], 2)
            try:
                result = SECTIONS[name](ctx)
            except Exception as exc:
                log(f"section {name} FAILED: {type(exc).__name__}: {exc}")
                result = {"error": f"{type(exc).__name__}: {exc}"}
                failed.append(name)
            result["_seconds"] = round(time.perf_counter() - t0, 1)
            result["_load_avg"] = [load_before, round(os.getloadavg()[0], 2)]
            sections[name] = result
            log(f"section {name} done in {result['_seconds']} s")
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        meta["harness"] = ctx.harness()
        ctx.close()
        shutil.rmtree(work, ignore_errors=True)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    results = {"meta": meta, "sections": sections, "targets": report.targets(sections)}
    pngs = _write(args.out, results)
    print("\n".join(report._targets_md(results["targets"])))
    log(f"wrote {args.out / 'latest.md'}, latest.json{', ' + ', '.join(pngs) if pngs else ''} "
        f"in {meta['wall_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
