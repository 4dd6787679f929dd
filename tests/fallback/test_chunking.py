"""Chunking and document loading: sizes, overlap, stable ids, structure, HTML."""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest

from fallback.chunking import chunk_document, html_to_text, load_documents
from fallback.text import split_sentences

# 30 distinct sentences of ~45 characters: one long paragraph that must be split.
SENTENCES = [f"Sentence number {i} describes the fruit {w}." for i, w in enumerate(
    "apple banana cherry damson elder fig grape huckle ice jack kiwi lemon mango nectar olive papaya quince "
    "raspberry satsuma tangerine ugli vanilla watermelon xigua yam zucchini acai bilberry cloudberry date"
    .split())]
PARAGRAPH = " ".join(SENTENCES)


def test_long_paragraph_splits_at_sentences_and_overlaps_by_whole_sentences() -> None:
    chunks = chunk_document(PARAGRAPH, source="fruit.txt", chunk_chars=300, overlap=100)

    assert len(chunks) >= 5
    assert all(len(c.text) <= 300 for c in chunks)
    for prev, nxt in zip(chunks, chunks[1:]):
        prev_sentences, next_sentences = split_sentences(prev.text), split_sentences(nxt.text)
        assert next_sentences[0] in prev_sentences  # the next chunk opens with the previous one's tail
        shared = [s for s in next_sentences if s in prev_sentences]
        assert 0 < len(" ".join(shared)) <= 100
        assert prev_sentences[-len(shared):] == shared
    # nothing lost, nothing invented: every sentence appears, every chunk is made of whole sentences
    all_sentences = [s for c in chunks for s in split_sentences(c.text)]
    assert set(all_sentences) == set(SENTENCES)


def test_words_are_never_cut_even_without_sentence_boundaries() -> None:
    words = [f"word{i:03d}" for i in range(400)]  # 3,200 chars, no punctuation, no newlines
    chunks = chunk_document(" ".join(words), source="w.txt", chunk_chars=250, overlap=60)

    assert all(len(c.text) <= 250 for c in chunks)
    for c in chunks:
        assert set(c.text.split()) <= set(words)
    assert [w for w in words if not any(w in c.text.split() for c in chunks)] == []
    # overlap falls back to whole trailing words
    assert chunks[1].text.split()[0] in chunks[0].text.split()


def test_ids_are_stable_across_runs_and_follow_the_text() -> None:
    doc = "# Guide\n\n" + "\n\n".join(" ".join(SENTENCES[i:i + 5]) for i in range(0, 30, 5))
    first = chunk_document(doc, source="docs/guide.md")
    again = chunk_document(doc, source="docs/guide.md")

    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    c0 = first[0]
    assert c0.id == hashlib.sha256(f"docs/guide.md\x000\x00{c0.text}".encode()).hexdigest()[:16]
    assert {c.doc_id for c in first} == {hashlib.sha256(b"docs/guide.md").hexdigest()[:16]}
    assert chunk_document(doc, source="other.md")[0].doc_id != c0.doc_id

    edited = chunk_document(doc.replace("fruit zucchini", "vegetable zucchini"), source="docs/guide.md")
    changed = [a.id != b.id for a, b in zip(first, edited)]
    assert changed[-1] and not changed[0]  # only the chunk holding the edit gets a new id


def test_headings_start_chunks_and_give_title_and_section() -> None:
    body_a = " ".join(SENTENCES[:12])  # ~560 chars: more than half a chunk
    doc = f"# Fruit guide\n\nIntro line.\n\n## Apples\n\n{body_a}\n\n## Bananas\n\nBananas are long.\n"
    chunks = chunk_document(doc, source="fruit.md")

    assert {c.title for c in chunks} == {"Fruit guide"}
    bananas = [c for c in chunks if c.text.startswith("## Bananas")]
    assert len(bananas) == 1 and bananas[0].metadata["section"] == "Bananas"
    assert not any(c.text.rstrip().endswith(("## Apples", "## Bananas")) for c in chunks)
    assert chunk_document("no heading here", source="notes/todo.txt")[0].title == "todo"


def test_small_code_block_is_kept_whole() -> None:
    code = "```\n" + "\n".join(f"x{i} = compute({i})" for i in range(12)) + "\n```"
    doc = " ".join(SENTENCES[:10]) + "\n\n" + code + "\n\nAfter the code."
    chunks = chunk_document(doc, source="c.md", chunk_chars=400, overlap=50)
    assert any(code in c.text for c in chunks)


@pytest.mark.parametrize("chunk_chars,overlap", [(50, 10), (900, 450), (900, -1)])
def test_invalid_sizes_are_rejected(chunk_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_document("text", source="x.txt", chunk_chars=chunk_chars, overlap=overlap)


HTML = """<!doctype html><html><head><title>Cache  guide</title>
<style>body { color: red; }</style><script>var secret = 1;</script></head>
<body><nav>Home</nav><h1>Answer cache</h1><p>Entries are <b>fresh</b> &amp; then stale.</p>
<script>trackVisitor();</script><h2>Eviction</h2><ul><li>Oldest first</li><li>Size bound</li></ul>
<pre>cache.set(key,
    value)</pre></body></html>"""


def test_html_is_converted_to_text_with_headings_and_without_scripts() -> None:
    text, title = html_to_text(HTML)

    assert title == "Cache guide"
    assert "# Answer cache" in text.splitlines()
    assert "## Eviction" in text.splitlines()
    assert "Entries are fresh & then stale." in text
    assert "- Oldest first" in text
    assert "    value)" in text  # <pre> keeps its indentation
    for leaked in ("secret", "trackVisitor", "color", "<b>", "&amp;"):
        assert leaked not in text


def test_load_documents_walks_directories_and_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("# Alpha\n\nText.")
    (root / "sub" / "b.txt").write_text("Plain text.")
    (root / "sub" / "c.HTML").write_text(HTML)
    (root / ".hidden.md").write_text("# Hidden")
    (root / ".git" / "d.md").write_text("# In git")
    (root / "e.json").write_text("{}")

    docs = list(load_documents([root]))
    assert [(s, t) for s, t, _ in docs] == [("a.md", "Alpha"), ("sub/b.txt", "b"), ("sub/c.HTML", "Cache guide")]
    assert "trackVisitor" not in docs[2][2]
    assert [s for s, _, _ in load_documents([root / "sub"], root=tmp_path)] == ["kb/sub/b.txt", "kb/sub/c.HTML"]
    assert [s for s, _, _ in load_documents([root / "a.md"])] == ["a.md"]
    with pytest.raises(FileNotFoundError):
        list(load_documents([root / "missing"]))


def test_shipped_corpus_fits_the_first_start_budget(corpus_chunks) -> None:
    # ≤ ~180 chunks keeps the first `make serve` (offline embedder, ~5 chunks/s) well under a minute
    assert 120 <= len(corpus_chunks) <= 180
    assert max(len(c.text) for c in corpus_chunks) <= 900
    assert len({c.source for c in corpus_chunks}) == 25
    assert all(c.source.startswith("python-stdlib/") and c.title for c in corpus_chunks)


def _random_markdown(rng: random.Random) -> str:
    vocab = [f"w{i}" for i in range(300)]

    def sentence() -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(3, 40))).capitalize() + rng.choice([".", "!", "?", ""])

    blocks = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.2:
            blocks.append("#" * rng.randint(1, 3) + " " + " ".join(rng.choices(vocab, k=rng.randint(1, 60))))
        elif kind < 0.3:
            blocks.append("```\n" + "\n".join(" ".join(rng.choices(vocab, k=rng.randint(1, 30)))
                                              for _ in range(rng.randint(1, 40))) + "\n```")
        elif kind < 0.35:
            blocks.append("x" * rng.randint(100, 2_500))  # a blob with no spaces
        else:
            blocks.append(" ".join(sentence() for _ in range(rng.randint(1, 30))))
    return "\n\n".join(blocks)


@pytest.mark.parametrize("chunk_chars,overlap", [(900, 150), (300, 100), (200, 0)])
def test_size_bound_and_no_lost_words_on_random_documents(chunk_chars: int, overlap: int) -> None:
    rng = random.Random(chunk_chars)
    for _ in range(150):
        doc = _random_markdown(rng)
        chunks = chunk_document(doc, source="r.md", chunk_chars=chunk_chars, overlap=overlap)
        assert chunks and all(0 < len(c.text) <= chunk_chars for c in chunks)
        assert [c.position for c in chunks] == list(range(len(chunks)))
        in_chunks = {w for c in chunks for w in c.text.split()}
        assert {w for w in doc.split() if not w.startswith("xx")} <= in_chunks
        assert sum(c.text.count("x" * 50) for c in chunks) >= doc.count("x" * 50) // 2
        blocks = doc.split("\n\n")
        ends_on_heading = bool(re.match(r"#{1,3} ", blocks[-1]))
        too_long = [b for b in blocks if re.match(r"#{1,3} ", b) and len(b) > chunk_chars - overlap - 2]
        for c in chunks[:-1] if ends_on_heading else chunks:  # only bare-heading chunks end on one
            lines = [ln for ln in c.text.splitlines() if ln.strip()]
            if re.match(r"#{1,3} ", lines[-1]) and not any(lines[-1] in b for b in too_long):
                assert all(re.match(r"#{1,3} ", ln) for ln in lines), c.text
