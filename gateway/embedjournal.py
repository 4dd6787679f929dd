"""Resumable ingest: every embedded batch is journaled to disk, so a killed ingest resumes from its vectors.

Under ``<kb>/embed-journal/`` (:data:`JOURNAL_DIR`), one journal per embedding model for ingest and one per
model and KB version for a progressive version's upgrade (:meth:`gateway.kb.KnowledgeBase.upgrade_journal`),
each a directory named by a digest of that id: ``ids.txt`` (one chunk id a line) and ``vectors.f32`` (the
rows, float32, in the same order), both append-only, written per batch.
Reading tolerates a torn tail (a kill mid-append): only rows present in both files, whole, are used. The
journal is removed when a version is written (its vectors then live in the version, which later ingests
reuse by chunk id). Chunk ids hash source + position + text, so a changed chunk is never served a stale row.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

JOURNAL_DIR = "embed-journal"  # under the KB root
_ID_LINE_BYTES = 17  # a chunk id (fallback.chunking.stable_id: 16 hex digits) and its newline


class EmbedJournal:
    def __init__(self, root: Path, model_id: str, dim: int | None) -> None:
        self.dir = Path(root) / hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.dim = dim

    def count(self) -> int:
        """Whole rows journaled, from the two files' sizes (two ``stat`` calls: cheap enough for /health);
        0 without a journal or a dimension."""
        if not self.dim:
            return 0
        try:
            rows = (self.dir / "vectors.f32").stat().st_size // (4 * self.dim)
            ids = (self.dir / "ids.txt").stat().st_size // _ID_LINE_BYTES
        except OSError:
            return 0
        return min(rows, ids)

    def load(self) -> dict[str, np.ndarray]:
        """Journaled vectors by chunk id ({} when there is no journal or it is for another dimension)."""
        try:
            ids = (self.dir / "ids.txt").read_text().split("\n")
            raw = np.fromfile(self.dir / "vectors.f32", dtype=np.float32)
        except (OSError, ValueError):
            return {}
        if not self.dim:
            return {}
        complete = [i for i in ids[:-1] if i]  # the last element is "" after a whole line, or a torn id
        rows = min(len(complete), raw.size // self.dim)
        matrix = raw[: rows * self.dim].reshape(rows, self.dim)
        return {cid: matrix[n] for n, cid in enumerate(complete[:rows])}

    def append(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Journal one batch (vectors first: an id is only trusted once its row is on disk)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # No fsync: the journal is for a killed process (the kernel keeps what was written), not for power
        # loss — an fsync per batch cost seconds per ingest on a busy disk; a lost tail is re-embedded.
        with open(self.dir / "vectors.f32", "ab") as fh:
            fh.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        with open(self.dir / "ids.txt", "a", encoding="utf-8") as fh:
            fh.write("".join(f"{i}\n" for i in ids))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the last journal gone: leave the KB directory as it was
        except OSError:
            pass
