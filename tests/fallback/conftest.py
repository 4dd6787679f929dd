"""Fixtures for the fallback tests: the shipped corpus chunked once, its keyword index, the golden set."""
from __future__ import annotations

from pathlib import Path

import pytest

from fallback.bm25 import KeywordIndex
from fallback.chunking import chunk_document, load_documents
from fallback.documents import Chunk
from fallback.evaluation import GoldenQuery, load_golden

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


@pytest.fixture(scope="session")
def corpus_chunks() -> list[Chunk]:
    """The shipped corpus chunked with ``chunk_document`` defaults (900 chars, 150 overlap)."""
    chunks: list[Chunk] = []
    for source, title, text in load_documents([CORPUS / "python-stdlib"], root=CORPUS):
        chunks.extend(chunk_document(text, source=source, title=title))
    return chunks


@pytest.fixture(scope="session")
def corpus_index(corpus_chunks: list[Chunk]) -> KeywordIndex:
    return KeywordIndex.build(corpus_chunks)


@pytest.fixture(scope="session")
def golden() -> list[GoldenQuery]:
    return load_golden(CORPUS / "golden.jsonl")
