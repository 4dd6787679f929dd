"""Side-by-side BM25 engine benchmark for the keyword fallback.

    python -m bench.bm25_engines --sizes 10000 100000

Engines: bm25s 0.3 (numpy backend, eager scores, PyStemmer via fallback.text) and tantivy 0.27 (Rust,
its own analyzer with the same stopwords and Snowball English stemmer); rank-bm25 (pure Python) only
as a reference at ≤ 10k. ``keyword_index`` is the shipped ``fallback.bm25.KeywordIndex`` (tantivy, one
writer thread, chunk records stored in the index, filter fields indexed): its query time includes
turning hits into ``Chunk`` objects, i.e. what the gateway pays. Each (engine, size) builds in one
fresh process and is loaded and queried in another, so RSS deltas are not polluted by the other
engine or by the build. Corpus: synthetic chunks of
~150 words (60–260) drawn from a Zipf–Mandelbrot distribution whose head is the real word ranking of the
shipped corpus (so stopwords and stemming behave as on text), tail padded with pseudo-words to 60k
types. Queries: 200 natural-question-like queries (1–2 function words + 2–4 content words).
Writes bench/results/bm25_engines.json (atomically) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.synthetic import vocabulary, zipf

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "bm25_engines.json"
CORPUS_DIR = ROOT / "corpus" / "python-stdlib"
ENGINES = ("bm25s", "tantivy", "rank_bm25", "keyword_index")
RANK_BM25_MAX = 10_000  # 182 ms/query at 100k (DESIGN.md); only a reference point
VOCAB = 60_000
N_QUERIES = 200
TOP_K = 10
SEED = 7


# --- synthetic corpus ---------------------------------------------------------------------------

def _vocabulary() -> list[str]:
    return vocabulary(VOCAB, SEED)


def make_corpus(n_docs: int) -> list[str]:
    vocab = _vocabulary()
    rng = np.random.default_rng(SEED + n_docs)
    lengths = np.clip(rng.normal(150, 40, n_docs).astype(int), 60, 260)
    ids = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf(len(vocab))).tolist()
    out, start = [], 0
    for n in lengths.tolist():
        out.append(" ".join([vocab[i] for i in ids[start:start + n]]))
        start += n
    return out


def make_queries(n: int = N_QUERIES) -> list[str]:
    vocab = _vocabulary()
    rng = np.random.default_rng(SEED - 1)
    function_words = ["how", "do", "i", "what", "is", "the", "a", "to", "can", "with", "for", "in"]
    content = np.array(vocab[50:20_000])
    p = zipf(len(content))
    out = []
    for _ in range(n):
        fw = list(rng.choice(function_words, size=int(rng.integers(1, 3))))
        cw = list(content[rng.choice(len(content), size=int(rng.integers(2, 5)), p=p)])
        out.append(" ".join(fw + cw) + "?")
    return out


# --- engines (thin wrappers: the bench measures the engines, not fallback.bm25) --------------------

class Bm25sEngine:
    name = "bm25s"

    def __init__(self, retriever=None):
        self.r = retriever

    @classmethod
    def build(cls, texts: list[str]) -> "Bm25sEngine":
        import bm25s

        from fallback.text import tokenize
        r = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
        r.index([tokenize(t) for t in texts], show_progress=False)
        return cls(r)

    def save(self, path: Path) -> None:
        self.r.save(str(path), show_progress=False)

    @classmethod
    def load(cls, path: Path) -> "Bm25sEngine":
        import bm25s
        return cls(bm25s.BM25.load(str(path), show_progress=False))

    def search(self, query: str, k: int) -> list[int]:
        from fallback.text import tokenize
        tokens = tokenize(query)
        docs, _ = self.r.retrieve([tokens], k=k, show_progress=False, n_threads=0)
        return docs[0].tolist()


class TantivyEngine:
    name = "tantivy"

    def __init__(self, index):
        import tantivy
        self.tantivy = tantivy
        self.index = index
        index.register_tokenizer("rag_en", self.analyzer())
        self.index.reload()
        self.searcher = index.searcher()
        self.schema = index.schema

    @staticmethod
    def analyzer():
        from fallback.bm25 import text_analyzer  # the same analysis as the gateway's index

        return text_analyzer()

    @classmethod
    def build(cls, texts: list[str], path: Path | None = None) -> "TantivyEngine":
        import tantivy
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("body", stored=False, tokenizer_name="rag_en", index_option="freq")
        sb.add_integer_field("ord", stored=False, indexed=False, fast=True)
        schema = sb.build()
        path.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(schema, path=str(path))
        index.register_tokenizer("rag_en", cls.analyzer())
        writer = index.writer(heap_size=200_000_000, num_threads=2)
        for i, t in enumerate(texts):
            writer.add_document(tantivy.Document(body=t, ord=i))
        writer.commit()
        writer.wait_merging_threads()
        return cls(index)

    def save(self, path: Path) -> None:  # tantivy writes at build time
        pass

    @classmethod
    def load(cls, path: Path) -> "TantivyEngine":
        import tantivy
        return cls(tantivy.Index.open(str(path)))

    def search(self, query: str, k: int) -> list[int]:
        t = self.tantivy
        tokens = self._analyzer.analyze(query) if hasattr(self, "_analyzer") else None
        if tokens is None:
            self._analyzer = self.analyzer()
            tokens = self._analyzer.analyze(query)
        if not tokens:
            return []
        q = t.Query.boolean_query([(t.Occur.Should, t.Query.term_query(self.schema, "body", tok))
                                   for tok in tokens])
        hits = self.searcher.search(q, limit=k, count=False).hits
        return self.searcher.fast_field_values("ord", [addr for _, addr in hits])


class KeywordIndexEngine:
    name = "keyword_index"

    def __init__(self, index):
        self.index = index

    @classmethod
    def build(cls, texts: list[str]) -> "KeywordIndexEngine":
        from fallback.bm25 import KeywordIndex
        from fallback.documents import Chunk
        chunks = [Chunk(id=f"c{i}", text=t, title=f"Document {i // 8}", source=f"docs/{i // 8}.md",
                        doc_id=f"d{i // 8}", position=i % 8) for i, t in enumerate(texts)]
        return cls(KeywordIndex.build(chunks))

    def save(self, path: Path) -> None:
        self.index.save(path)

    @classmethod
    def load(cls, path: Path) -> "KeywordIndexEngine":
        from fallback.bm25 import KeywordIndex
        return cls(KeywordIndex.load(path))

    def search(self, query: str, k: int) -> list:
        return self.index.search(query, k)


class RankBm25Engine:
    name = "rank_bm25"

    def __init__(self, model):
        self.model = model

    @classmethod
    def build(cls, texts: list[str]) -> "RankBm25Engine":
        from rank_bm25 import BM25Okapi

        from fallback.text import tokenize
        return cls(BM25Okapi([tokenize(t) for t in texts]))

    def search(self, query: str, k: int) -> list[int]:
        from fallback.text import tokenize
        scores = self.model.get_scores(tokenize(query))
        top = np.argpartition(scores, -k)[-k:]
        return top[np.argsort(-scores[top])].tolist()


# --- workers (run in a fresh process each) ---------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples RSS every 5 ms in a thread: ru_maxrss would report corpus generation's peak instead."""

    def __enter__(self) -> "_PeakRss":
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _latencies(engine, queries: list[str]) -> dict:
    for q in queries[:20]:  # warm-up: first-touch page faults, lazy imports
        engine.search(q, TOP_K)
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        engine.search(q, TOP_K)
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"query_p50_ms": round(statistics.median(ms), 3),
            "query_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "query_max_ms": round(ms[-1], 3)}


def worker_build(engine: str, size: int, path: Path) -> dict:
    texts = make_corpus(size)
    gc.collect()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    with _PeakRss() as peak:
        if engine == "tantivy":
            e = TantivyEngine.build(texts, path)
        elif engine == "bm25s":
            e = Bm25sEngine.build(texts)
        elif engine == "keyword_index":
            e = KeywordIndexEngine.build(texts)
        else:
            e = RankBm25Engine.build(texts)
    build_s = time.perf_counter() - t0
    out = {"build_s": round(build_s, 2),
           "build_rss_delta_mb": round(_rss_mb() - rss0, 1),
           "build_peak_rss_delta_mb": round(peak.peak - rss0, 1)}
    if engine == "rank_bm25":  # in-memory only: measure queries here
        out.update(_latencies(e, make_queries()))
        out["loaded_rss_delta_mb"] = out["build_rss_delta_mb"]
        return out
    t0 = time.perf_counter()
    e.save(path)
    out["save_s"] = round(time.perf_counter() - t0, 2)
    out["disk_mb"] = round(_dir_bytes(path) / 2**20, 1)
    return out


def worker_query(engine: str, size: int, path: Path) -> dict:
    queries = make_queries()
    import bm25s  # noqa: F401  (imports are not part of load time)
    import tantivy  # noqa: F401

    import fallback.bm25  # noqa: F401
    gc.collect()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    e = {"tantivy": TantivyEngine, "bm25s": Bm25sEngine, "keyword_index": KeywordIndexEngine}[engine].load(path)
    load_s = time.perf_counter() - t0
    out = {"load_s": round(load_s, 3)}
    out.update(_latencies(e, queries))
    out["loaded_rss_delta_mb"] = round(_rss_mb() - rss0, 1)
    return out


def _run_worker(kind: str, engine: str, size: int, path: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.bm25_engines", "--worker", kind, engine, str(size), str(path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} worker {engine}@{size} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(sizes: list[int], engines: list[str]) -> list[dict]:
    rows = []
    for size in sizes:
        for engine in engines:
            if engine == "rank_bm25" and size > RANK_BM25_MAX:
                continue
            with tempfile.TemporaryDirectory(prefix=f"bm25-{engine}-") as tmp:
                path = Path(tmp) / "index"
                row = {"engine": engine, "chunks": size}
                row.update(_run_worker("build", engine, size, path))
                if engine != "rank_bm25":
                    row.update(_run_worker("query", engine, size, path))
            rows.append(row)
            print(f"  {engine:9} {size:>7,d}: build {row['build_s']} s, "
                  f"p50 {row['query_p50_ms']} ms, p99 {row['query_p99_ms']} ms", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| engine | chunks | build s | disk MB | load s | RSS loaded MB | build peak RSS MB "
            "| query p50 ms | query p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['chunks']:,} | {r['build_s']} | {r.get('disk_mb', '—')} "
                     f"| {r.get('load_s', '—')} | {r['loaded_rss_delta_mb']} | {r['build_peak_rss_delta_mb']} "
                     f"| {r['query_p50_ms']} | {r['query_p99_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "ENGINE", "SIZE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, engine, size, path = args.worker
        fn = worker_build if kind == "build" else worker_query
        print(json.dumps(fn(engine, int(size), Path(path))))
        return 0

    t0 = time.perf_counter()
    rows = run(args.sizes, args.engines)
    import bm25s
    import tantivy
    result = {
        "benchmark": "bm25_engines",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "versions": {"bm25s": bm25s.__version__, "tantivy": tantivy.__version__},
        "setup": {"words_per_chunk": "150 ± 40 (60–260)", "vocabulary": VOCAB, "queries": N_QUERIES,
                  "top_k": TOP_K, "query_latency": "analyze + search + map hits to ordinals, one thread"},
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(markdown(rows))
    print(f"\n(wall {result['wall_s']} s; written to {RESULTS.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
