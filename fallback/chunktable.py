"""The chunk records of one KB version, with their texts left on disk.

A KB version's ``chunks.jsonl`` holds every chunk with its text (~1 KB each). Keeping 100k of them as
Python objects cost ~140 MB of the gateway's memory (bench: RSS 559 MB at 100k chunks). Here only a
*light* record per chunk stays in memory — id, source, title, doc_id (interned: a document's chunks
share them), position, metadata — plus the byte offset of its line; a chunk's text is read back from
the memory-mapped file when the chunk is returned (top-k results only: a few µs each).

A memory map of a file that another process truncates kills the reader with SIGBUS: the gateway
therefore hands this class a private, unlinked copy (``gateway.kb``), never a path others can write.
"""
from __future__ import annotations

import json
import mmap
import sys
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from fallback.documents import Chunk


class ChunkTable:
    """Read-only, indexable chunk records of one ``chunks.jsonl`` (line i ↔ chunk i ↔ vector i).

    ``source`` is a path, or an open binary file positioned at its start (the table then owns it and
    maps it). Raises ``OSError`` / ``ValueError`` at construction for an unreadable or malformed file.
    """

    def __init__(self, source: Path | BinaryIO) -> None:
        if isinstance(source, (str, Path)):
            self.path = Path(source)
            fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - the map needs it open; close() closes both
        else:
            fh = source
            self.path = Path(getattr(source, "name", "") if isinstance(getattr(source, "name", None), str) else "")
        light: list[Chunk] = []
        offsets: list[int] = []
        pos = 0
        try:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    rec["text"] = ""
                    for key in ("source", "title", "doc_id"):
                        if isinstance(rec.get(key), str):
                            rec[key] = sys.intern(rec[key])
                    light.append(Chunk.from_record(rec))
                    offsets.append(pos)
                pos += len(line)
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if pos else None
        except BaseException:
            fh.close()
            raise
        self._light = light
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._fh: BinaryIO | None = fh

    @classmethod
    def empty(cls) -> "ChunkTable":
        """A table of no chunks (a KB served from its keyword index alone)."""
        table = cls.__new__(cls)
        table.path, table._light, table._fh, table._mm = Path(""), [], None, None
        table._offsets = np.zeros(0, dtype=np.int64)
        return table

    def __len__(self) -> int:
        return len(self._light)

    def light(self, i: int) -> Chunk:
        """Chunk ``i`` without its text (for filtering)."""
        return self._light[i]

    def lights(self) -> list[Chunk]:
        return self._light

    def __getitem__(self, i: int) -> Chunk:
        """Chunk ``i`` with its text, read from the file."""
        start = int(self._offsets[i])
        assert self._mm is not None, "an empty table has no chunk to read"
        end = self._mm.find(b"\n", start)
        raw = self._mm[start:end if end >= 0 else len(self._mm)]
        return replace(self._light[i], text=json.loads(raw)["text"])

    def __iter__(self) -> Iterator[Chunk]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        if self._fh is not None:
            self._fh.close()
