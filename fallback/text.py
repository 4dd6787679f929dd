"""Text analysis shared by the keyword index, the extractive answerer and their tests.

One analyzer for documents and queries: split on anything that is not a letter or digit (so
``lru_cache`` → ``lru``, ``cache``), casefold, drop English stopwords, Snowball English stemming
(PyStemmer, the same algorithm as tantivy's ``stemmer("english")``). Changing any of this changes the
tokens an index was built with, so ``ANALYZER_VERSION`` is stored in every saved index.
"""
from __future__ import annotations

import re
from functools import lru_cache

import Stemmer

ANALYZER_VERSION = "en-snowball-1"
MAX_TOKEN_CHARS = 40  # longer "words" are hashes, base64 or minified code: noise for BM25

# NLTK's English list (apostrophe forms dropped: the splitter already breaks "don't" into "don", "t").
STOPWORDS: frozenset[str] = frozenset("""
a about above after again against ain all am an and any are aren as at be because been before being
below between both but by can couldn d did didn do does doesn doing don down during each few for from
further had hadn has hasn have haven having he her here hers herself him himself his how i if in into is
isn it its itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once
only or other our ours ourselves out over own re s same shan she should shouldn so some such t than that
the their theirs them themselves then there these they this those through to too under until up ve very
was wasn we were weren what when where which while who whom why will with won wouldn y you your yours
yourself yourselves
""".split())

_WORD = re.compile(r"[^\W_]+")
_stemmer = Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def words(text: str) -> list[str]:
    """Casefolded words without stopwords, before stemming."""
    return [w for w in _WORD.findall(text.casefold()) if w not in STOPWORDS and len(w) <= MAX_TOKEN_CHARS]


def tokenize(text: str) -> list[str]:
    """The index/query analyzer: words → stems, order kept, duplicates kept (BM25 counts them)."""
    return [_stem(w) for w in words(text)]


# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace and an
# upper-case letter, digit, quote, bracket or backquote; "e.g. foo" and "i.e. bar" do not end one.
_SENTENCE_END = re.compile(
    r"(?<!\be\.g\.)(?<!\bi\.e\.)(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[A-Z0-9\"'(\[`*])")
_BLANK_LINES = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences; a blank line always ends one. Whitespace inside is collapsed."""
    out: list[str] = []
    for para in _BLANK_LINES.split(text):
        para = " ".join(para.split())
        if not para:
            continue
        out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out
