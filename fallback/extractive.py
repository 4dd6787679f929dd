"""Extractive answers: the most relevant sentences of the retrieved chunks, each with its citation.

The last rung of the generation ladder (LLM down, no cached answer). It only ever quotes the chunks;
when no sentence shares a term with the question it says so instead of guessing.

Scoring, per prose sentence (code blocks, doctest lines and headings are skipped): the idf-weighted
share of the question's terms it contains (terms found only in its section heading count half), idf
computed over the retrieved chunks (a term in every chunk says little), plus a small prior for
earlier chunks and earlier sentences. A sentence must share a term itself, or be the first sentence
under a heading that does (``## statistics.stdev`` → "Return the square root of the sample
variance."). The best sentences (within ``_MIN_RELATIVE_SCORE`` of the top one, near-duplicates from
chunk overlaps dropped) are returned in reading order: by chunk rank, then position in the chunk.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from fallback.documents import Chunk
from fallback.formats import plain_text
from fallback.text import split_sentences, tokenize

NO_INFO_ANSWER = "I could not find relevant information in the knowledge base for this question."

_MIN_SENTENCE_CHARS = 15
_MAX_SENTENCE_CHARS = 600  # longer "sentences" are tables or run-on lists, not readable answers
_MIN_RELATIVE_SCORE = 0.35
_DUPLICATE_JACCARD = 0.7
_HEADING_WEIGHT = 0.5  # a question term in the sentence's section heading counts half
_CHUNK_PRIOR = 0.15  # retrieval rank is evidence too: 0.15 for the first chunk, 0.075 the second…
_SENTENCE_PRIOR = 0.04

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_RULE = re.compile(r"^\s*([=\-*_]\s*){3,}$")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.(\s|$)|\$ )")
_LIST_MARKER = re.compile(r"^\s*([-*+]|\d+[.)])\s+")


@dataclass(frozen=True, slots=True)
class ExtractiveAnswer:
    text: str
    citations: list[int] = field(default_factory=list)  # 1-based indices into the chunks, as cited
    used_chunk_ids: list[str] = field(default_factory=list)  # the cited chunks' ids, same order

    @property
    def found(self) -> bool:
        return bool(self.citations)


def _prose_blocks(text: str, section: str) -> list[tuple[str, str, bool]]:
    """(paragraph, heading above it, first paragraph under a heading in this chunk) for a chunk's
    prose: code, doctest lines and rules dropped."""
    lines = text.splitlines()
    fences = [i for i, ln in enumerate(lines) if _FENCE.match(ln)]
    # An odd number of fences means the chunk starts or ends inside a code block (chunks overlap and
    # split long blocks). If the lines before the first fence look like code, it started inside one.
    in_code = bool(len(fences) % 2) and any(
        ln.startswith((" ", "\t")) or _CODE_LINE.match(ln) for ln in lines[:fences[0]] if ln.strip())
    blocks: list[tuple[str, str, bool]] = []
    buf: list[str] = []
    lead = False

    def flush() -> None:
        nonlocal lead
        if buf:
            blocks.append(("\n".join(buf), section, lead))
            buf.clear()
            lead = False

    for ln in lines:
        if _FENCE.match(ln):
            in_code = not in_code
            flush()
        elif in_code or _CODE_LINE.match(ln) or _RULE.match(ln) or not ln.strip():
            flush()
        elif _HEADING.match(ln):
            flush()
            section = _HEADING.sub("", ln).strip()
            lead = True
        else:
            buf.append(_LIST_MARKER.sub("", ln))
    flush()
    return blocks


@dataclass(slots=True)
class _Candidate:
    chunk_index: int
    sentence_index: int
    text: str
    terms: frozenset[str]
    heading_terms: frozenset[str]
    lead: bool  # the first sentence under a heading: it usually defines what the heading names
    score: float = 0.0


def extractive_answer(question: str, chunks: Sequence[Chunk], *, max_sentences: int = 3,
                      ) -> ExtractiveAnswer:
    """Answer ``question`` with up to ``max_sentences`` sentences quoted from ``chunks``.

    Each sentence is followed by ``[n]``, n the 1-based position of its chunk in ``chunks``. With no
    chunks, no question terms, or no sentence sharing a term with the question, returns
    ``NO_INFO_ANSWER`` with no citations. Deterministic for the same inputs.
    """
    q_terms = set(tokenize(question))
    if not chunks or not q_terms or max_sentences <= 0:
        return ExtractiveAnswer(NO_INFO_ANSWER)

    candidates: list[_Candidate] = []
    for ci, chunk in enumerate(chunks):
        section = chunk.metadata.get("section", "") if isinstance(chunk.metadata, dict) else ""
        si = 0
        for para, heading, lead in _prose_blocks(chunk.text, section if isinstance(section, str) else ""):
            heading_terms = frozenset(tokenize(heading))
            for k, sentence in enumerate(split_sentences(para)):
                # "Pretty printing:" introduces an example we do not quote: useless on its own
                if (_MIN_SENTENCE_CHARS <= len(sentence) <= _MAX_SENTENCE_CHARS
                        and not sentence.endswith(":") and not _looks_like_code(sentence)):
                    candidates.append(_Candidate(ci, si, sentence, frozenset(tokenize(sentence)),
                                                 heading_terms, lead and k == 0))
                si += 1

    n = len(chunks)
    chunk_terms = [set(tokenize(c.text)) for c in chunks]
    idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5))
           for t in q_terms for df in [sum(t in terms for terms in chunk_terms)]}
    total = sum(idf.values())
    for c in candidates:
        matched = q_terms & c.terms
        from_heading = (q_terms & c.heading_terms) - matched
        # a sentence must share a term itself, unless it is the lead sentence of a matching section
        if matched or (c.lead and from_heading):
            c.score = ((sum(idf[t] for t in matched) + _HEADING_WEIGHT * sum(idf[t] for t in from_heading))
                       / total + _CHUNK_PRIOR / (1 + c.chunk_index) + _SENTENCE_PRIOR / (1 + c.sentence_index))
    scored = sorted((c for c in candidates if c.score > 0),
                    key=lambda c: (-c.score, c.chunk_index, c.sentence_index))
    if not scored:
        return ExtractiveAnswer(NO_INFO_ANSWER)

    picked: list[_Candidate] = []
    floor = scored[0].score * _MIN_RELATIVE_SCORE
    for c in scored:
        if len(picked) == max_sentences or c.score < floor:
            break
        if any(_near_duplicate(c, p) for p in picked):
            continue
        picked.append(c)
    picked.sort(key=lambda c: (c.chunk_index, c.sentence_index))

    citations: list[int] = []
    for c in picked:
        if c.chunk_index + 1 not in citations:
            citations.append(c.chunk_index + 1)
    # Quoted as prose: inline markup left in the source (rST roles and ``literals``, Markdown `code`,
    # **strong**) is resolved to its text, so an answer never shows markup.
    text = " ".join(f"{plain_text(c.text)} [{c.chunk_index + 1}]" for c in picked)
    return ExtractiveAnswer(text, citations, [chunks[i - 1].id for i in citations])


_CODE_CHARS = frozenset("=()[]{}_<>|\\")
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][\w.]*(\[[^\]]*\])?\s*=[^=]")


def _looks_like_code(sentence: str) -> bool:
    """Docstrings mix unfenced code into prose (``w = csv.writer(f) …``); quoting it reads badly."""
    if _ASSIGNMENT.match(sentence):
        return True
    symbols = sum(ch in _CODE_CHARS for ch in sentence)
    return symbols / max(len(sentence), 1) > 0.08


def _near_duplicate(a: _Candidate, b: _Candidate) -> bool:
    na, nb = " ".join(a.text.casefold().split()), " ".join(b.text.casefold().split())
    if na in nb or nb in na:
        return True
    union = a.terms | b.terms
    return bool(union) and len(a.terms & b.terms) / len(union) >= _DUPLICATE_JACCARD
