"""Document formats: reStructuredText, PDF and DOCX read into structured Markdown, then chunked and
answered without quoting markup or code."""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest

from fallback.bm25 import KeywordIndex
from fallback.chunking import chunk_document, load_documents
from fallback.extractive import extractive_answer
from fallback.formats import rst_inline, rst_to_markdown

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
RST_DOCS = CORPUS / "python-docs-rst"
# What must never reach an answer: rST directives/roles/targets, Markdown fences, doctest prompts.
MARKUP = re.compile(r"(^|\s)\.\. [\w:-]+::|:(func|meth|class|mod|exc|attr|data|ref|term|pep|const):`|``|"
                    r"^\s*(>>>|```|\.\. _)|\*\*\w")

SAMPLE_RST = """\
:mod:`shelfy` --- Shelves for things
====================================

.. module:: shelfy
   :synopsis: Keeps things.

.. index:: single: shelf

The :mod:`shelfy` module keeps **things** on :ref:`shelves <shelf-doc>`, see :pep:`8`.

.. _usage:

Usage
-----

.. function:: put(thing, *, shelf=None)
              put(thing, position)

   Put *thing* on a shelf and return its ``position``.  Example::

      >>> put("cup")
      3

   .. versionadded:: 3.9

   .. note::

      Shelves never fill up.

>>> put("plate")
4
"""


def test_rst_sections_directives_and_roles_become_plain_structured_markdown() -> None:
    md, title = rst_to_markdown(SAMPLE_RST)
    assert title == "shelfy --- Shelves for things"
    assert md.startswith("# shelfy --- Shelves for things\n")
    assert "## Usage" in md and "### shelfy.put(thing, *, shelf=None)" in md
    assert "The shelfy module keeps things on shelves, see PEP 8." in md
    assert "Put thing on a shelf and return its position.  Example:" in md
    assert "New in version 3.9." in md and "Shelves never fill up." in md
    assert md.count("```") == 4  # the literal block and the doctest block are fenced
    assert ".. " not in md and ":mod:" not in md and "synopsis" not in md and "single: shelf" not in md
    chunks = chunk_document(md, source="shelfy.rst", title=title, chunk_chars=200, overlap=0)
    assert {c.metadata.get("section") for c in chunks} >= {"shelfy.put(thing, *, shelf=None)"}


@pytest.mark.parametrize("text, plain", [
    (":func:`~os.path.join`", "join"), (":class:`!Foo`", "Foo"), (":rfc:`2822#section-3`", "RFC 2822"),
    ("`Python <https://python.org>`_", "Python"), ("*emphasis* and **strong**", "emphasis and strong"),
])
def test_rst_roles_resolve_to_their_text(text: str, plain: str) -> None:
    assert rst_inline(text) == plain


@pytest.fixture(scope="module")
def rst_chunks() -> list:
    docs = list(load_documents([RST_DOCS], root=CORPUS))
    assert len(docs) == 45 and all(src.endswith(".rst.txt") for src, _, _ in docs)
    return [c for src, title, text in docs for c in chunk_document(text, source=src, title=title)]


def test_the_rst_corpus_loads_with_titles_and_sections_and_without_directives(rst_chunks: list) -> None:
    by_source = {c.source: c for c in rst_chunks}
    assert by_source["python-docs-rst/heapq.rst.txt"].title == "heapq --- Heap queue algorithm"
    sections = {c.metadata.get("section") for c in rst_chunks}
    assert "heapq.nsmallest(n, iterable, key=None)" in sections
    leaked = [c.text for c in rst_chunks if re.search(r"^\.\. |:(func|mod|meth|class):`", c.text, re.M)]
    assert not leaked, leaked[:2]


@pytest.mark.parametrize("question", [
    "get the n smallest items from a large iterable", "shuffle a list in place",
    "split a command line string the way a POSIX shell would", "sample standard deviation of data",
    "pack integers into bytes with a given byte order", "measure how long a small code snippet takes",
    "remove common leading indentation from a block of text", "print the stack trace of the exception",
])
def test_extractive_answers_over_rst_quote_prose_not_markup_or_code(rst_chunks: list, question: str) -> None:
    index = KeywordIndex.build(rst_chunks)
    answer = extractive_answer(question, index.search(question, 5))
    assert answer.found
    for line in answer.text.splitlines():
        assert not MARKUP.search(line), line


def test_extractive_answers_over_the_sample_corpus_never_quote_markup_or_code() -> None:
    chunks = [c for src, title, text in load_documents([CORPUS / "python-stdlib"], root=CORPUS)
              for c in chunk_document(text, source=src, title=title)]
    index = KeywordIndex.build(chunks)
    for question in ("parse command line arguments", "copy a directory tree", "read a CSV file",
                     "serialize an object to JSON", "match a regular expression"):
        answer = extractive_answer(question, index.search(question, 5))
        assert answer.found
        for line in answer.text.splitlines():
            assert not MARKUP.search(line), line


def _pdf(lines: list[str], title: str) -> bytes:
    """A minimal one-page PDF whose text is ``lines`` (Helvetica), with an Info title."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
    ops.append("ET")
    stream = zlib.compress("\n".join(ops).encode("latin-1"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (" + title.encode("latin-1") + b") >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_and_docx_are_ingested_with_titles_and_headings(tmp_path: Path) -> None:
    import docx

    (tmp_path / "pumps.pdf").write_bytes(_pdf(["Centrifugal pumps move water with an impeller.",
                                                "Prime the pump before starting it."], "Pump manual"))
    d = docx.Document()
    d.add_heading("Valve handbook", level=0)
    d.add_heading("Maintenance", level=1)
    d.add_paragraph("Grease the valve stem every six months.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "torque", "40 Nm"
    d.save(str(tmp_path / "valves.docx"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")

    docs = {src: (title, text) for src, title, text in load_documents([tmp_path / "pumps.pdf",
                                                                         tmp_path / "valves.docx"])}
    title, text = docs["pumps.pdf"]
    assert title == "Pump manual" and "impeller" in text and "Prime the pump" in text
    title, text = docs["valves.docx"]
    assert title == "Valve handbook" and "## Maintenance" in text and "Grease the valve stem" in text
    assert "torque | 40 Nm" in text
    chunks = chunk_document(text, source="valves.docx", title=title)
    assert chunks[0].metadata.get("section") in ("Valve handbook", "Maintenance")
    with pytest.raises(ValueError, match="broken.pdf: unreadable PDF"):
        list(load_documents([tmp_path / "broken.pdf"]))
