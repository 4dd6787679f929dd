"""Local BM25 keyword index: the retrieval fallback when the embedder or the vector DB is down.

Engine: tantivy, chosen by ``bench/bm25_engines.py`` (100k synthetic chunks, this machine: query p99
0.57 ms vs 4.3 ms for bm25s, build 2.6 s vs 11 s, 17 MB on disk vs 75 MB, opens in 5 ms). Scoring is
tantivy's BM25 (k1=1.2, b=0.75), analyzed by ``analyze`` (letters/digits, lowercase, English stopwords,
Snowball English stemming), over two fields (BM25F-style, the per-field scores summed with a weight):

* ``body`` = ``indexed_text(chunk)``: the chunk's text (its section heading is already in it);
* ``outline`` = the chunk's *page* outline: its title and the section headings of every chunk of the same
  source (``page_outline``), so a question about what a page is for matches all of its chunks a little.

The keyword **fallback** (and keyword-only KBs) weighs the outline ``OUTLINE_WEIGHT`` = 0.3; the keyword
half of **hybrid** search does not use it (``outline=False``): the vectors already bring the page's topic
and the outline then double-counts it. Measured on both golden sets (``bench/results/bm25_fields.md``):
keyword-fallback MRR 0.928 -> 0.953 on the larger set (the half not used to choose the weight: 0.918 ->
0.944), 0.899 -> 0.900 on the sample set; hybrid 0.968 -> 0.963 and 0.959 -> 0.965. Format-1 indexes (one
field of title + section + text, before this) still load and are searched as they were built.

On disk, one directory per KB version::

    <dir>/manifest.json   format, engine/analyzer versions, size, built_at, sha256 of every file
    <dir>/tantivy/        the tantivy index; each chunk's record is a stored field

``save`` writes a sibling temp directory and renames it into place; ``load`` verifies every file's
size and sha256 against the manifest (tantivy itself happily serves a flipped byte), so a damaged
index raises ``IndexCorrupt`` at start-up instead of returning wrong results later.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import _lru_cache_wrapper, lru_cache
from pathlib import Path
from typing import Any

import tantivy

from fallback.documents import Chunk
from fallback.filters import matches
from fallback.leftovers import owner_tag
from fallback.text import MAX_TOKEN_CHARS, STOPWORDS

FORMAT = 2  # 2: body + outline fields; 1 (one body field of title + section + text) still loads
_READABLE_FORMATS = (1, 2)
OUTLINE_WEIGHT = 0.3  # chosen on half the larger golden set (flat 0.961-0.962 for 0.2-0.5), see the docstring
OUTLINE_MAX_CHARS = 2_000  # a page with hundreds of headings: its first ones (index size stays bounded)
ENGINE = "tantivy"
ANALYZER = "rag_en"  # tantivy tokenizer name; ANALYZER_VERSION below changes whenever its pipeline does
ANALYZER_VERSION = "simple-lower-stop-snowball-en-1"
RETRIEVER = "bm25"
CORE_FILTER_FIELDS = ("source", "title", "doc_id")
_MANIFEST = "manifest.json"
_ENGINE_DIR = "tantivy"
_WRITER_HEAP_BYTES = 64_000_000
_PROGRESS_EVERY = 1_000
# Decoded chunks kept per open index (~1-2 KB each: a few MB). Reading a hit's stored record and decoding
# its JSON was ~40 % of a search's CPU (sample KB: 0.11 ms of which ~0.05 ms for 5 hits), paid again
# for every query that finds the same chunk; an index never changes once open.
CHUNK_CACHE_SIZE = 4_096
BUILD_PREFIX = "rag-bm25-build-"  # + owner tag: a crashed build's directory in the temp dir (see leftovers)

FilterValue = str | int | float | bool
Filters = Mapping[str, FilterValue | Sequence[FilterValue]]


class KeywordIndexError(Exception):
    """Base of the keyword index's typed errors; carries the index path and a reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class IndexMissing(KeywordIndexError):
    """No index at that path (never built for this KB version, or deleted)."""


class IndexCorrupt(KeywordIndexError):
    """An index is there but unusable: damaged files, bad manifest, or built by an incompatible version."""


def text_analyzer() -> tantivy.TextAnalyzer:
    """Simple tokens, lowercased, long tokens and English stopwords dropped, Snowball-stemmed."""
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS + 1))
            .filter(tantivy.Filter.custom_stopword(sorted(STOPWORDS)))
            .filter(tantivy.Filter.stemmer("english"))
            .build())


_ANALYZER = text_analyzer()


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    sb.add_text_field("outline", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    for name in CORE_FILTER_FIELDS:
        sb.add_text_field(name, stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_json_field("meta", stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_bytes_field("record", stored=True, indexed=False)
    return sb.build()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (fsync the directory itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeywordIndex:
    """A BM25 index over chunks, built in memory-mapped files, saved and loaded per KB version.

    Thread-safe for concurrent ``search`` calls (tantivy releases the GIL while searching).
    """

    def __init__(self, index: tantivy.Index, *, path: Path, size: int, built_at: float,
                 format: int = FORMAT) -> None:
        index.register_tokenizer(ANALYZER, _ANALYZER)  # tokenizers are code, not stored in the index
        index.reload()
        self._index = index
        self._schema = index.schema
        self._searcher = index.searcher()
        self._chunk_at = _chunk_reader(self._searcher)
        self._path = path  # the tantivy directory this instance reads
        self._size = size
        self._built_at = built_at
        self._format = format  # 1: no outline field

    # --- properties ---

    @property
    def size(self) -> int:
        """Number of chunks indexed."""
        return self._size

    @property
    def built_at(self) -> float:
        """Wall-clock epoch seconds when the index was built."""
        return self._built_at

    @staticmethod
    def analyze(text: str) -> list[str]:
        """The tokens BM25 sees for ``text`` (documents and queries alike)."""
        return _ANALYZER.analyze(text)

    @staticmethod
    def indexed_text(chunk: Chunk) -> str:
        """The ``body`` field of a chunk: its text (the chunker keeps the section heading in it)."""
        return chunk.text

    @staticmethod
    def page_outline(chunks: Sequence[Chunk]) -> dict[str, str]:
        """The ``outline`` field per source: the page title, then each section heading once, in order
        (at most ``OUTLINE_MAX_CHARS``)."""
        parts: dict[str, list[str]] = {}
        for chunk in chunks:
            seen = parts.setdefault(chunk.source, [chunk.title] if chunk.title else [])
            section = chunk.metadata.get("section") if isinstance(chunk.metadata, dict) else None
            if isinstance(section, str) and section and section not in seen:
                seen.append(section)
        return {source: "\n".join(p)[:OUTLINE_MAX_CHARS] for source, p in parts.items()}

    # --- build / save / load ---

    @classmethod
    def build(cls, chunks: Sequence[Chunk], progress: Callable[[int, int], None] | None = None,
              ) -> "KeywordIndex":
        """Index ``chunks`` (CPU-bound: call it from a worker thread, not the event loop).

        ``progress(done, total)`` is called every 1,000 chunks and once at the end. The index lives in
        a private temporary directory until ``save``; it is deleted when this object is collected.
        Raises ``TypeError`` if a chunk's metadata is not JSON-serialisable.
        """
        tmp = Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{owner_tag()}-"))
        path = tmp / _ENGINE_DIR
        path.mkdir()
        try:
            index = tantivy.Index(_schema(), path=str(path))
            index.register_tokenizer(ANALYZER, _ANALYZER)
            writer = index.writer(heap_size=_WRITER_HEAP_BYTES, num_threads=1)
            total = len(chunks)
            outlines = cls.page_outline(chunks)
            for i, chunk in enumerate(chunks):
                writer.add_document(cls._document(chunk, outlines.get(chunk.source, "")))
                if progress is not None and (i + 1) % _PROGRESS_EVERY == 0 and i + 1 < total:
                    progress(i + 1, total)
            writer.commit()
            writer.wait_merging_threads()
            if progress is not None:
                progress(total, total)
            built = cls(index, path=path, size=total, built_at=time.time())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        weakref.finalize(built, shutil.rmtree, tmp, True)
        return built

    @staticmethod
    def _document(chunk: Chunk, outline: str) -> tantivy.Document:
        doc = tantivy.Document()
        doc.add_text("body", KeywordIndex.indexed_text(chunk))
        doc.add_text("outline", outline)
        doc.add_text("source", chunk.source)
        doc.add_text("title", chunk.title)
        doc.add_text("doc_id", chunk.doc_id)
        if chunk.metadata:
            doc.add_json("meta", chunk.metadata)
        doc.add_bytes("record", json.dumps(chunk.to_record(), ensure_ascii=False).encode("utf-8"))
        return doc

    def save(self, dir: Path) -> None:
        """Write the index to ``dir`` atomically (temp sibling + rename), replacing any index there.

        Readers of ``dir`` see either the old or the new index, never a partial one; a crash leaves a
        hidden ``.<name>.tmp-*`` sibling that is safe to delete. Raises ``OSError`` on I/O failure.
        """
        dir = Path(dir)
        dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = dir.parent / f".{dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(self._path, tmp / _ENGINE_DIR, ignore=shutil.ignore_patterns("*.lock"))
            files = {}
            for f in sorted((tmp / _ENGINE_DIR).rglob("*")):
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
                    files[f.relative_to(tmp).as_posix()] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            manifest = {"format": FORMAT, "engine": ENGINE, "engine_version": tantivy.__version__,  # type: ignore[attr-defined]
                        "analyzer": ANALYZER_VERSION, "size": self._size, "built_at": self._built_at,
                        "files": files}
            with open(tmp / _MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            if dir.exists():
                old = dir.parent / f".{dir.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(dir, old)
                os.rename(tmp, dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dir)
            fsync_dir(dir.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, dir: Path) -> "KeywordIndex":
        """Open a saved index without re-tokenising anything.

        Raises ``IndexMissing`` if ``dir`` does not exist or is empty, and ``IndexCorrupt`` if its
        manifest is missing or unreadable, it was written by an incompatible format/analyzer, or any
        file differs from the manifest (size or sha256).
        """
        dir = Path(dir)
        if not dir.is_dir():
            raise IndexMissing(dir, "no index directory")
        if not any(dir.iterdir()):
            raise IndexMissing(dir, "index directory is empty")
        try:
            manifest = json.loads((dir / _MANIFEST).read_text(encoding="utf-8"))
            size, built_at, files = int(manifest["size"]), float(manifest["built_at"]), manifest["files"]
            fmt, engine, analyzer = manifest["format"], manifest["engine"], manifest["analyzer"]
        except FileNotFoundError:
            raise IndexCorrupt(dir, "manifest.json missing") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(dir, f"unreadable manifest: {exc}") from exc
        if fmt not in _READABLE_FORMATS or (engine, analyzer) != (ENGINE, ANALYZER_VERSION):
            raise IndexCorrupt(dir, f"incompatible index (format={fmt}, engine={engine}, analyzer={analyzer}); "
                                    "rebuild it")
        if not isinstance(files, dict) or not files:
            raise IndexCorrupt(dir, "manifest lists no files")
        for rel, meta in files.items():
            f = dir / rel
            try:
                if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
                    raise IndexCorrupt(dir, f"{rel} does not match the manifest")
            except OSError as exc:
                raise IndexCorrupt(dir, f"{rel}: {exc.strerror or exc}") from exc
        try:
            index = tantivy.Index.open(str(dir / _ENGINE_DIR))
            loaded = cls(index, path=dir / _ENGINE_DIR, size=size, built_at=built_at, format=int(fmt))
        except ValueError as exc:
            raise IndexCorrupt(dir, f"tantivy could not open the index: {exc}") from exc
        if loaded._searcher.num_docs != size:
            raise IndexCorrupt(dir, f"index holds {loaded._searcher.num_docs} chunks, manifest says {size}")
        return loaded

    # --- query ---

    def search(self, query: str, top_k: int, filters: Filters | None = None, *, outline: bool = True) -> list[Chunk]:
        """The ``top_k`` chunks by BM25 score for ``query`` (``retriever="bm25"``, ``score`` = BM25).

        ``outline``: also score the page outline field (weight ``OUTLINE_WEIGHT``): on for the keyword
        fallback, off for the keyword half of hybrid search (module docstring). A format-1 index has none.

        ``filters`` is ``{field: value | [values]}``: a chunk matches when, for every field, its value
        equals one of the values. Fields ``source``, ``title`` and ``doc_id`` are the chunk's own;
        any other name is a metadata key (a list-valued metadata entry matches any of its elements;
        types must match: ``3`` does not match ``"3"``). A query with no indexable terms (only
        stopwords or punctuation) returns ``[]``. Raises ``ValueError`` for a filter value that is not
        str, int, float or bool (or a list of them). Takes ~0.1–1 ms; safe to call from a thread.
        """
        if top_k <= 0:
            return []
        tokens = self.analyze(query)
        if not tokens:
            return []
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", t)) for t in tokens]
        if outline and self._format >= 2:
            clauses += [(tantivy.Occur.Should, tantivy.Query.boost_query(
                tantivy.Query.term_query(self._schema, "outline", t), OUTLINE_WEIGHT)) for t in tokens]
        q = tantivy.Query.boolean_query(clauses)
        if filters:
            fq = self._filter_query(filters)
            if fq is None:
                return []
            # const score 0: the filter selects, only the text terms score
            q = tantivy.Query.boolean_query([(tantivy.Occur.Must, q),
                                             (tantivy.Occur.Must, tantivy.Query.const_score_query(fq, 0.0))])
        hits = self._searcher.search(q, limit=top_k, count=False).hits
        chunks = [self._chunk_at(addr.segment_ord, addr.doc).scored(score, RETRIEVER) for score, addr in hits]
        # The index compares filter values as terms (3 and "3", 1 and 1.0 look alike there); the
        # exact rule shared with the embedded store decides, so both retrievers agree.
        return [c for c in chunks if matches(c, filters)] if filters else chunks

    def _filter_query(self, filters: Filters) -> tantivy.Query | None:
        clauses = []
        for field, value in filters.items():
            values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            if not values:
                return None  # "one of nothing" matches nothing
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise ValueError(f"filter {field!r}: values must be str, int, float or bool, "
                                     f"got {type(v).__name__}")
            name = field if field in CORE_FILTER_FIELDS else f"meta.{field}"
            if field in CORE_FILTER_FIELDS:
                values = [str(v) for v in values]
            clauses.append((tantivy.Occur.Must, tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, name, v)) for v in values])))
        return tantivy.Query.boolean_query(clauses)

    def chunks(self) -> Iterator[Chunk]:
        """Every indexed chunk, in no particular order (for re-indexing, audits and tests)."""
        if self._size == 0:
            return
        hits = self._searcher.search(tantivy.Query.all_query(), limit=self._size, count=False).hits
        for _, addr in hits:
            yield _read_chunk(self._searcher, addr)  # not through the cache: a full scan would flush it

    def chunk_cache_info(self) -> Any:  # functools' _CacheInfo
        """Hits, misses and size of the decoded-chunk cache (``functools`` cache info)."""
        return self._chunk_at.cache_info()

    def __repr__(self) -> str:
        return f"KeywordIndex(size={self._size}, built_at={self._built_at:.0f}, path={str(self._path)!r})"



def _read_chunk(searcher: tantivy.Searcher, addr: tantivy.DocAddress) -> Chunk:
    record = searcher.doc(addr)["record"][0]
    return Chunk.from_record(json.loads(record))


def _chunk_reader(searcher: tantivy.Searcher) -> _lru_cache_wrapper[Chunk]:
    """The chunk stored at (segment, doc) of ``searcher``'s snapshot, decoded once and kept in an LRU of
    ``CHUNK_CACHE_SIZE`` (thread-safe; shared chunks are frozen and nothing mutates their metadata). It
    holds the searcher, not the index object, so that object is still freed (and its build directory
    removed) as soon as it is dropped."""
    @lru_cache(maxsize=CHUNK_CACHE_SIZE)
    def chunk_at(segment_ord: int, doc: int) -> Chunk:
        return _read_chunk(searcher, tantivy.DocAddress(segment_ord, doc))

    return chunk_at
