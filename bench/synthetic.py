"""Synthetic chunks at scale: realistic text, synthetic vectors.

Text: sentences of 6–22 words drawn from a Zipf–Mandelbrot distribution whose head is the real word
ranking of the shipped corpus (so stopwords, stemming and posting-list lengths behave as on prose),
padded with pseudo-words to a 50,000-word vocabulary; ~135 words (≈ 900 characters, the default
``kb.chunk_chars``) per chunk. Vectors: seeded random unit vectors (384-d like the local embedder) —
not embeddings, so they say nothing about retrieval quality, only about cost. Embedding 100k real
chunks with the offline embedder would take hours on 2 cores (DESIGN.md).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = ROOT / "corpus" / "python-stdlib"
VOCAB = 50_000
DIM = 384
SEED = 11
CHUNKS_FILE = "chunks.jsonl"
VECTORS_FILE = "vectors.npy"


def vocabulary(size: int = VOCAB, seed: int = SEED) -> list[str]:
    """The sample corpus' words by frequency, padded to ``size`` with pronounceable made-up words."""
    counts: Counter[str] = Counter()
    for path in sorted(CORPUS_DIR.glob("*.md")):
        counts.update(re.findall(r"[a-z]+", path.read_text(encoding="utf-8").lower()))
    head = [w for w, _ in counts.most_common()]
    rng = np.random.default_rng(seed)
    onsets = "b c d f g h j k l m n p r s t v w z br ch cl cr dr fl gr pl pr sh st th tr".split()
    vowels = "a e i o u ai ea ee io ou".split()
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "rk"]
    seen, tail = set(head), []
    while len(head) + len(tail) < size:
        w = "".join(str(rng.choice(onsets)) + str(rng.choice(vowels)) for _ in range(int(rng.integers(2, 4))))
        w += str(rng.choice(codas))
        if w not in seen:
            seen.add(w)
            tail.append(w)
    return head + tail


def zipf(n: int, s: float = 1.07, q: float = 2.7) -> np.ndarray:
    p = 1.0 / (np.arange(n) + 1 + q) ** s
    return p / p.sum()


def chunk_texts(n: int, seed: int = SEED) -> Iterator[str]:
    """``n`` chunk texts of ~135 words in sentences (deterministic for a given seed)."""
    vocab = np.array(vocabulary(), dtype=object)
    p = zipf(len(vocab))
    rng = np.random.default_rng(seed)
    block = 5_000
    for start in range(0, n, block):
        m = min(block, n - start)
        lengths = np.clip(rng.normal(135, 27, m).astype(int), 60, 260)
        ids = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
        words = vocab[ids]
        pos = 0
        for length in lengths.tolist():
            doc = words[pos:pos + length]
            pos += length
            sentences, i = [], 0
            while i < length:
                k = int(rng.integers(6, 23))
                part = doc[i:i + k]
                i += k
                sentences.append(str(part[0]).capitalize() + (" " if len(part) > 1 else "")
                                 + " ".join(part[1:]) + ".")
            yield " ".join(sentences)


def queries(n: int = 200, seed: int = SEED + 1) -> list[str]:
    """Question-like keyword queries: 1–2 function words + 2–4 content words."""
    vocab = vocabulary()
    rng = np.random.default_rng(seed)
    function_words = ["how", "do", "i", "what", "is", "the", "a", "to", "can", "with", "for", "in"]
    content = np.array(vocab[50:20_000])
    p = zipf(len(content))
    out = []
    for _ in range(n):
        fw = [str(w) for w in rng.choice(function_words, size=int(rng.integers(1, 3)))]
        cw = [str(w) for w in content[rng.choice(len(content), size=int(rng.integers(2, 5)), p=p)]]
        out.append(" ".join(fw + cw) + "?")
    return out


def unit_vectors(n: int, dim: int = DIM, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def write_corpus(out_dir: Path, n: int) -> dict:
    """Write ``chunks.jsonl`` (Chunk records) and ``vectors.npy`` (n × 384 float32) for ``n`` chunks."""
    from fallback.documents import Chunk

    out_dir.mkdir(parents=True, exist_ok=True)
    chars = 0
    with open(out_dir / CHUNKS_FILE, "w", encoding="utf-8") as fh:
        for i, text in enumerate(chunk_texts(n)):
            doc = i // 8
            chunk = Chunk(id=f"syn-{i:07d}", text=text, title=f"Synthetic document {doc}",
                          source=f"synthetic/doc-{doc:06d}.md", doc_id=f"doc-{doc:06d}", position=i % 8)
            chars += len(text)
            fh.write(json.dumps(chunk.to_record(), ensure_ascii=False) + "\n")
    vectors = np.lib.format.open_memmap(out_dir / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(SEED)
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        block = rng.standard_normal((m, DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start:start + m] = block
    vectors.flush()
    del vectors
    return {"chunks": n, "mean_chars": round(chars / max(n, 1), 1)}


def read_chunks(corpus_dir: Path, n: int) -> list:
    """The first ``n`` chunks of a written corpus as ``Chunk`` objects."""
    from fallback.documents import Chunk

    out = []
    with open(corpus_dir / CHUNKS_FILE, encoding="utf-8") as fh:
        for line in fh:
            if len(out) >= n:
                break
            out.append(Chunk.from_record(json.loads(line)))
    if len(out) < n:
        raise ValueError(f"{corpus_dir}: only {len(out)} chunks, {n} wanted")
    return out
