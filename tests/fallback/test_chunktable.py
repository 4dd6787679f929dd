"""ChunkTable: texts stay on disk, records come back whole and in order."""
from __future__ import annotations

import json

import pytest

from fallback.chunktable import ChunkTable
from fallback.documents import Chunk


def test_round_trip_keeps_texts_on_disk(tmp_path):
    chunks = [Chunk(id=f"c{i}", text=f"text {i} ünïcode \\n\n{'x' * i}", source=f"doc{i % 2}.md",
                    title="T", doc_id=f"d{i % 2}", position=i, metadata={"section": f"s{i}"}) for i in range(50)]
    path = tmp_path / "chunks.jsonl"
    path.write_text("".join(json.dumps(c.to_record(), ensure_ascii=False) + "\n" for c in chunks), encoding="utf-8")
    table = ChunkTable(path)
    assert len(table) == 50
    assert [table[i] for i in range(50)] == chunks
    assert list(table) == chunks
    assert table.light(7).text == "" and table.light(7).metadata == {"section": "s7"}
    assert table.light(2).source is table.light(4).source  # interned: a document's chunks share it
    table.close()


def test_malformed_file_raises(tmp_path):
    path = tmp_path / "chunks.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "te')
    with pytest.raises(ValueError):
        ChunkTable(path)


def test_empty_file(tmp_path):
    path = tmp_path / "chunks.jsonl"
    path.write_text("")
    assert len(ChunkTable(path)) == 0
