"""Extractive answers: quote the right sentences, cite the right chunks, never invent."""
from __future__ import annotations

import re

import pytest

from fallback.bm25 import KeywordIndex
from fallback.documents import Chunk
from fallback.extractive import NO_INFO_ANSWER, extractive_answer


def chunk(i: int, text: str, **metadata: object) -> Chunk:
    return Chunk(id=f"chunk-{i}", text=text, title="Ops guide", source=f"ops/{i}.md", doc_id="ops",
                 position=i, metadata=dict(metadata))


CHUNKS = [
    chunk(1, "BM25 ranks passages by term frequency and inverse document frequency. "
             "It needs no embeddings, which makes it a good local fallback."),
    chunk(2, "A circuit breaker stops calls to a dependency after repeated failures. "
             "While open it fails fast; after a cool-down it lets a trial call through.\n\n"
             "```\nbreaker = CircuitBreaker(fail_max=5)  # circuit breaker calls\n```"),
    chunk(3, "The answer cache keeps the last good answer for each question. "
             "Stale entries are served only when the LLM is unavailable."),
]


def test_cites_the_chunk_that_answers() -> None:
    answer = extractive_answer("How does a circuit breaker stop calls to a failing dependency?", CHUNKS)

    assert answer.citations == [2]
    assert answer.used_chunk_ids == ["chunk-2"]
    assert answer.text.startswith("A circuit breaker stops calls to a dependency after repeated failures. [2]")
    assert "CircuitBreaker(" not in answer.text  # code is never quoted as prose
    # every quoted sentence is verbatim from the chunk it cites
    quoted = re.findall(r"(.+?) \[(\d)\](?: |$)", answer.text)
    assert quoted
    for sentence, n in quoted:
        assert sentence.strip() in " ".join(CHUNKS[int(n) - 1].text.split())


def test_sentences_from_several_chunks_come_in_reading_order_with_their_own_markers() -> None:
    answer = extractive_answer("When is a stale cached answer served instead of asking the LLM, "
                               "and what does BM25 rank by?", CHUNKS, max_sentences=2)

    assert answer.citations == [1, 3]
    assert answer.used_chunk_ids == ["chunk-1", "chunk-3"]
    assert answer.text.index("[1]") < answer.text.index("[3]")
    assert len(re.findall(r"\[\d\]", answer.text)) == 2


@pytest.mark.parametrize("question,chunks", [
    ("How does a circuit breaker work?", []),
    ("What is the best banana smoothie recipe?", CHUNKS),
    ("What is it and how?", CHUNKS),  # only stopwords
])
def test_no_relevant_sentence_gives_the_explicit_no_info_answer(question: str, chunks: list[Chunk]) -> None:
    answer = extractive_answer(question, chunks)
    assert answer.text == NO_INFO_ANSWER
    assert answer.citations == [] and answer.used_chunk_ids == [] and not answer.found


def test_overlapping_chunks_do_not_repeat_a_sentence() -> None:
    text = CHUNKS[1].text.split("\n\n")[0]
    overlapping = [chunk(1, text), chunk(2, "after repeated failures. " + text)]
    answer = extractive_answer("What stops calls after repeated failures?", overlapping, max_sentences=3)

    assert answer.text.count("A circuit breaker stops calls") == 1


def test_max_sentences_and_determinism() -> None:
    q = "circuit breaker calls failures answer cache BM25 fallback"
    first = extractive_answer(q, CHUNKS, max_sentences=2)
    assert len(re.findall(r"\[\d\]", first.text)) == 2
    assert extractive_answer(q, CHUNKS, max_sentences=2) == first
    assert extractive_answer(q, CHUNKS, max_sentences=0).text == NO_INFO_ANSWER


def test_section_heading_lets_a_definition_sentence_answer() -> None:
    doc = chunk(9, "## statistics.stdev(data, xbar=None)\n\nReturn the square root of the sample variance.\n\n"
                   "See ``variance`` for arguments and other details.")
    answer = extractive_answer("What does stdev return?", [doc])
    assert answer.text == "Return the square root of the sample variance. [1]"


def test_on_the_shipped_corpus_the_answer_quotes_the_retrieved_doc(corpus_index: KeywordIndex) -> None:
    question = "How do I recursively delete a directory tree?"
    chunks = corpus_index.search(question, 4)
    answer = extractive_answer(question, chunks)

    assert "Recursively delete a directory tree." in answer.text
    assert chunks[answer.citations[0] - 1].source == "python-stdlib/shutil.md"


def test_unfenced_code_is_not_quoted_as_an_answer():
    chunk = Chunk(id="c1", source="csv.md", title="csv", text=(
        "csv_writer = csv.writer(fileobj [, dialect='excel']) for row in sequence: csv_writer.writerow(row)\n\n"
        "The writer object converts the user's data into delimited strings on the given file-like object."))
    answer = extractive_answer("how does the csv writer convert data", [chunk])
    assert "csv_writer =" not in answer.text
    assert answer.text.startswith("The writer object converts")
