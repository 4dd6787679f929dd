"""Keyword index: round trip through disk, typed errors, filters, and agreement with rank-bm25."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from fallback.bm25 import IndexCorrupt, IndexMissing, KeywordIndex
from fallback.documents import Chunk

QUERIES = ["pretty print JSON with indentation", "remove a directory tree", "sample standard deviation",
           "run a command and capture output", "temporary directory"]


def chunk(i: int, text: str, source: str = "a.md", **metadata: object) -> Chunk:
    return Chunk(id=f"c{i}", text=text, title=source.removesuffix(".md").title(), source=source,
                 doc_id=f"d-{source}", position=i, metadata=dict(metadata))


SMALL = [
    chunk(0, "Circuit breakers open after repeated failures.", "resilience.md", lang="en", year=2023,
          tags=["ops", "breaker"]),
    chunk(1, "A breaker in half-open state lets a few trial calls through.", "resilience.md", lang="en",
          year=2024),
    chunk(2, "Der Leistungsschalter (breaker) schützt den Dienst.", "de/resilience.md", lang="de", year=2024),
    chunk(3, "Answer caches serve stale answers when the LLM fails.", "cache.md", lang="en", year=2024),
]


@pytest.fixture(scope="module")
def small_index() -> KeywordIndex:
    return KeywordIndex.build(SMALL)


def test_save_load_round_trip_returns_the_same_ranked_chunks(corpus_index: KeywordIndex,
                                                             corpus_chunks: list[Chunk], tmp_path: Path) -> None:
    corpus_index.save(tmp_path / "v1")
    loaded = KeywordIndex.load(tmp_path / "v1")

    assert loaded.size == corpus_index.size == len(corpus_chunks)
    assert loaded.built_at == corpus_index.built_at
    by_id = {c.id: c for c in corpus_chunks}
    for q in QUERIES:
        before, after = corpus_index.search(q, 5), loaded.search(q, 5)
        assert [(c.id, c.score) for c in after] == [(c.id, c.score) for c in before]
        assert len(after) == 5 and all(c.retriever == "bm25" and c.score > 0 for c in after)
        assert [c.score for c in after] == sorted((c.score for c in after), reverse=True)
        for c in after:  # the stored record is the chunk, minus score/retriever
            assert c.to_record() == by_id[c.id].to_record()
    assert sorted(c.id for c in loaded.chunks()) == sorted(by_id)


def test_build_reports_progress(small_index: KeywordIndex) -> None:
    calls: list[tuple[int, int]] = []
    chunks = [chunk(i, f"text number {i}") for i in range(2_500)]
    index = KeywordIndex.build(chunks, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1_000, 2_500), (2_000, 2_500), (2_500, 2_500)]
    assert index.size == 2_500


def test_save_replaces_atomically_and_leaves_no_temp_dirs(small_index: KeywordIndex,
                                                          corpus_index: KeywordIndex, tmp_path: Path) -> None:
    target = tmp_path / "kb" / "keyword"
    small_index.save(target)
    corpus_index.save(target)  # same version dir saved again (e.g. a rebuild)

    assert KeywordIndex.load(target).size == corpus_index.size
    assert sorted(p.name for p in target.parent.iterdir()) == ["keyword"]


def test_missing_index_raises_index_missing(tmp_path: Path) -> None:
    with pytest.raises(IndexMissing) as err:
        KeywordIndex.load(tmp_path / "never-built")
    assert err.value.path == tmp_path / "never-built"
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexMissing):
        KeywordIndex.load(tmp_path / "empty")


def _saved(index: KeywordIndex, path: Path) -> Path:
    index.save(path)
    return path


def _flip_a_byte_in_the_largest_segment_file(d: Path) -> None:
    victim = max((p for p in (d / "tantivy").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))


def _edit_manifest(key: str, value: object):
    def edit(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        m[key] = value
        (d / "manifest.json").write_text(json.dumps(m))
    return edit


@pytest.mark.parametrize("damage,reason", [
    (_flip_a_byte_in_the_largest_segment_file, "does not match the manifest"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable manifest"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json missing"),
    (lambda d: (d / "tantivy" / "meta.json").unlink(), "meta.json"),
    (_edit_manifest("analyzer", "some-older-analyzer"), "incompatible"),
    (_edit_manifest("size", 3), "manifest says 3"),
], ids=["flipped-byte", "garbage-manifest", "no-manifest", "missing-file", "old-analyzer", "wrong-size"])
def test_damaged_index_raises_index_corrupt(small_index: KeywordIndex, tmp_path: Path, damage, reason: str) -> None:
    d = _saved(small_index, tmp_path / "v1")
    damage(d)
    with pytest.raises(IndexCorrupt) as err:
        KeywordIndex.load(d)
    assert reason in err.value.reason


@pytest.mark.parametrize("filters,expected", [
    ({"source": "resilience.md"}, ["c0", "c1"]),
    ({"source": ["resilience.md", "de/resilience.md"]}, ["c0", "c1", "c2"]),
    ({"title": "Resilience"}, ["c0", "c1"]),
    ({"doc_id": "d-de/resilience.md"}, ["c2"]),
    ({"lang": "de"}, ["c2"]),
    ({"year": 2024}, ["c1", "c2"]),
    ({"year": "2024"}, []),  # types must match
    ({"lang": "en", "year": [2023, 2025]}, ["c0"]),  # fields AND, values OR
    ({"tags": "ops"}, ["c0"]),  # a list-valued entry matches any element
    ({"source": []}, []),
    ({"unknown_key": "x"}, []),
])
def test_filters_select_chunks_without_changing_scores(small_index: KeywordIndex, filters: dict,
                                                       expected: list[str]) -> None:
    unfiltered = {c.id: c.score for c in small_index.search("breaker", 10)}
    got = small_index.search("breaker", 10, filters)
    assert sorted(c.id for c in got) == expected
    assert all(c.score == unfiltered[c.id] for c in got)


def test_filtered_search_fills_top_k_from_deep_in_the_ranking(corpus_index: KeywordIndex) -> None:
    # shutil is not in the unfiltered top 5 for this query; the filter runs inside the search
    unfiltered = corpus_index.search("read JSON data from a file", 5)
    assert all(c.source != "python-stdlib/shutil.md" for c in unfiltered)
    got = corpus_index.search("read JSON data from a file", 5, {"source": "python-stdlib/shutil.md"})
    assert len(got) == 5 and {c.source for c in got} == {"python-stdlib/shutil.md"}


def test_invalid_filter_value_is_rejected(small_index: KeywordIndex) -> None:
    with pytest.raises(ValueError, match="lang"):
        small_index.search("breaker", 5, {"lang": {"nested": "dict"}})


def test_queries_without_indexable_terms_return_nothing(small_index: KeywordIndex) -> None:
    assert small_index.search("the of and?!", 5) == []
    assert small_index.search("breaker", 0) == []
    assert small_index.search("zyzzyva", 5) == []
    assert KeywordIndex.build([]).search("breaker", 5) == []


def test_analyzer_stems_lowercases_and_drops_stopwords() -> None:
    assert KeywordIndex.analyze("The Breakers were OPENED, lru_cache!") == ["breaker", "open", "lru", "cach"]


def test_top5_agrees_with_rank_bm25_oracle_on_the_golden_queries(corpus_index: KeywordIndex,
                                                                   corpus_chunks: list[Chunk], golden) -> None:
    """rank-bm25 is too slow to serve (182 ms/query at 100k) but is a plain reading of the formula."""
    tokens = [KeywordIndex.analyze(KeywordIndex.indexed_text(c)) for c in corpus_chunks]
    oracle = BM25Okapi(tokens, k1=1.2, b=0.75)  # tantivy's parameters: compare scoring, not tuning
    overlaps = []
    for q in golden:
        scores = oracle.get_scores(KeywordIndex.analyze(q.query))
        expected = {corpus_chunks[i].id for i in np.argsort(-scores, kind="stable")[:5]}
        got = {c.id for c in corpus_index.search(q.query, 5, outline=False)}  # the body field alone
        overlaps.append(len(expected & got) / 5)
    assert len(overlaps) >= 50
    assert sum(overlaps) / len(overlaps) >= 0.8


def test_the_fallback_scores_the_page_outline_and_the_hybrid_half_does_not() -> None:
    # The question names what the page is about (its title/headings), not words of the chunk itself.
    chunks = [chunk(0, "## Overview\n\nUse it to keep a list in order after each insertion.", "bisect.md",
                    section="Overview"),
              chunk(1, "## insort(a, x)\n\nInsert x in a, keeping it sorted.", "bisect.md", section="insort(a, x)"),
              chunk(2, "## Overview\n\nA list in order of priority, smallest first.", "heapq.md", section="Overview")]
    titles = ["bisect — array bisection algorithm"] * 2 + ["heapq — heap queue algorithm"]
    chunks = [replace(c, title=t) for c, t in zip(chunks, titles)]
    index = KeywordIndex.build(chunks)
    assert "bisection" not in chunks[0].text.casefold()
    fallback = index.search("bisection: keep a list in order", 3)
    hybrid_half = index.search("bisection: keep a list in order", 3, outline=False)
    assert fallback[0].id == "c0" and fallback[0].score > hybrid_half[0].score
    # Without the outline the title word matches nothing: chunk text alone decides.
    assert {c.id for c in hybrid_half[:2]} == {"c0", "c2"}


def test_page_outline_lists_the_title_then_each_heading_once_and_is_bounded() -> None:
    chunks = [chunk(i, "text", "p.md", section=s) for i, s in enumerate(["A", "B", "A", "C" * 3000])]
    outline = KeywordIndex.page_outline(chunks)["p.md"]
    assert outline.startswith("P\nA\nB\nCCC") and len(outline) == 2000


def _write_format1_index(chunks: list[Chunk], d: Path) -> None:
    """An index as format 1 wrote it (one body field of title + section + text), written here by hand."""
    import hashlib
    import time

    import tantivy

    from fallback.bm25 import ANALYZER, ANALYZER_VERSION, _ANALYZER

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    for name in ("source", "title", "doc_id"):
        sb.add_text_field(name, stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_json_field("meta", stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_bytes_field("record", stored=True, indexed=False)
    (d / "tantivy").mkdir(parents=True)
    index = tantivy.Index(sb.build(), path=str(d / "tantivy"))
    index.register_tokenizer(ANALYZER, _ANALYZER)
    writer = index.writer(heap_size=15_000_000, num_threads=1)
    for c in chunks:
        doc = tantivy.Document()
        doc.add_text("body", "\n".join([c.title, str(c.metadata.get("section", "")), c.text]))
        for name in ("source", "title", "doc_id"):
            doc.add_text(name, getattr(c, name))
        doc.add_bytes("record", json.dumps(c.to_record()).encode())
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    files = {f.relative_to(d).as_posix(): {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
             for f in sorted((d / "tantivy").rglob("*")) if f.is_file() and not f.name.endswith(".lock")}
    (d / "manifest.json").write_text(json.dumps({"format": 1, "engine": "tantivy", "engine_version": "x",
                                                 "analyzer": ANALYZER_VERSION, "size": len(chunks),
                                                 "built_at": time.time(), "files": files}))


def test_an_index_written_in_format_1_still_loads_and_searches_as_built(tmp_path: Path) -> None:
    _write_format1_index(SMALL, tmp_path / "old")
    old = KeywordIndex.load(tmp_path / "old")
    assert [c.id for c in old.search("breaker failures", 2)] == ["c0", "c1"]
    assert [c.id for c in old.search("resilience", 3)] == [c.id for c in old.search("resilience", 3, outline=False)]
    assert {c.id for c in old.search("resilience", 3)} == {"c0", "c1", "c2"}  # the title was in its body


def test_a_chunk_found_again_is_decoded_once_and_scored_for_each_query() -> None:
    index = KeywordIndex.build(SMALL)
    first = {c.id: c for c in index.search("breaker", 4)}
    misses = index.chunk_cache_info().misses
    second = {c.id: c for c in index.search("breaker trial calls", 4)}

    assert "c1" in first and "c1" in second and first["c1"].score != second["c1"].score
    assert index.chunk_cache_info().misses == misses + len(second.keys() - first.keys())
    assert index.chunk_cache_info().hits >= len(second.keys() & first.keys()) > 0
    by_id = {c.id: c for c in SMALL}
    for c in second.values():
        assert c.to_record() == by_id[c.id].to_record() and c.retriever == "bm25"


def test_chunks_at_the_same_position_of_two_segments_are_not_confused(tmp_path: Path) -> None:
    """The decoded-chunk cache is keyed by (segment, doc): doc 0 exists once per segment."""
    import tantivy

    from fallback.bm25 import ANALYZER, _ANALYZER, _schema

    index = tantivy.Index(_schema(), path=str(tmp_path))
    index.register_tokenizer(ANALYZER, _ANALYZER)
    writer = index.writer(heap_size=15_000_000, num_threads=1)
    for c in SMALL[:2], SMALL[2:]:  # one commit each: two segments
        for one in c:
            writer.add_document(KeywordIndex._document(one, ""))
        writer.commit()
    writer.wait_merging_threads()
    kw = KeywordIndex(index, path=tmp_path, size=len(SMALL), built_at=0.0)
    assert len({addr.segment_ord for _, addr in kw._searcher.search(tantivy.Query.all_query(), 10).hits}) == 2
    for c in SMALL:
        [hit] = kw.search(c.text, 1)
        assert hit.id == c.id


def test_a_dropped_index_removes_its_build_directory_at_once() -> None:
    """The chunk cache must not tie the index into a reference cycle (its temp dir would wait for the GC)."""
    index = KeywordIndex.build(SMALL)
    index.search("breaker", 2)
    build_dir = index._path.parent
    assert build_dir.exists()
    del index
    assert not build_dir.exists()


def test_scored_keeps_every_other_field() -> None:
    from dataclasses import fields

    c = SMALL[0]
    s = c.scored(1.5, "bm25")
    assert (s.score, s.retriever) == (1.5, "bm25")
    for f in fields(Chunk):
        if f.name not in ("score", "retriever"):
            assert getattr(s, f.name) == getattr(c, f.name), f.name
