"""Knowledge-base versions on disk: ingest into a new version, activate atomically, roll back.

Layout under ``<data_dir>/kb``::

    versions/<version>/manifest.json   what went in (counts, embedder, chunking, parent version)
    versions/<version>/chunks.jsonl    one Chunk record per line
    versions/<version>/vectors.npy     float32 (n, dim), row i ↔ line i (embedded store only)
    versions/<version>/keyword/        the BM25 index for this version
    ACTIVE                             {"version": "..."} — replaced atomically (write tmp + os.replace)

A version directory is built under ``.tmp-*`` and renamed into ``versions/`` only when complete, so a
crash mid-ingest leaves the previous version active and usable; leftovers are removed at start-up.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Sequence

import numpy as np

from fallback.bm25 import KeywordIndex, fsync_dir
from fallback.chunking import chunk_document, load_documents
from fallback.chunktable import ChunkTable
from fallback.documents import Chunk

if TYPE_CHECKING:
    from gateway.upstreams.base import Embedder, VectorStore

log = logging.getLogger("rag_sidecar.kb")

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Upsert = Callable[[Sequence[Chunk], "np.ndarray | None"], Awaitable[None]]  # IngestTarget.upsert


def embedder_id(embedder: Embedder) -> str:
    """What makes vectors interchangeable: backend + model (cached vectors are reused only on a match)."""
    return getattr(embedder, "model_id", None) or embedder.name


def save_seed_vectors(version_dir: Path, out: Path) -> int:
    """Export a version's vectors as a seed cache (``ids`` + ``vectors`` + ``embedder``). Returns rows."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    ids = [json.loads(line)["id"] for line in (version_dir / "chunks.jsonl").read_text().splitlines() if line]
    vectors = np.load(version_dir / "vectors.npy")
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, ids=np.array(ids), vectors=vectors.astype(np.float32),
                        embedder=np.array((manifest.get("embedder") or {}).get("name", "")))
    os.replace(tmp, out)
    return len(ids)


def load_seed_vectors(path: Path, embedder: Embedder) -> dict[str, np.ndarray]:
    """Vectors by chunk id from a seed cache made by the same embedder; {} when absent or for another."""
    try:
        with np.load(path) as data:
            if str(data["embedder"]) != embedder_id(embedder):
                return {}
            return {str(i): v for i, v in zip(data["ids"], data["vectors"])}
    except (OSError, KeyError, ValueError):
        return {}


class KBError(Exception):
    """A KB operation failed (unknown version, nothing to ingest, corrupt version)."""


class KBCorrupt(KBError):
    """A version exists but cannot be served (unreadable chunks, vectors that don't match them)."""


@dataclass
class KBVersion:
    """One loaded, immutable KB version. The gateway swaps whole objects, never mutates one."""

    version: str
    path: Path
    manifest: dict[str, Any]
    chunks: ChunkTable
    keyword_index: KeywordIndex | None = None
    keyword_error: str | None = None  # why the keyword index is unusable, if it is
    loaded_at: float = field(default_factory=time.time)

    @property
    def created_at(self) -> float:
        return float(self.manifest.get("created_at", 0.0))


BUILDER_FILE = ".builder-pid"


def _builder_alive(tmp: Path) -> bool:
    """Whether the process that is building ``tmp`` still runs (no PID file: a crashed or old build)."""
    try:
        pid = int((tmp / BUILDER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False  # ours, from an earlier failed attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _save_synced(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _write_chunks(path: Path, chunks: Sequence[Chunk]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(json.dumps(c.to_record(), ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class KnowledgeBase:
    """Versions of one KB under ``root`` (``<data_dir>/kb``)."""

    def __init__(self, root: Path, *, keep_versions: int = 5) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.active_file = self.root / "ACTIVE"
        self.keep_versions = keep_versions
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # ---- listing / activation -------------------------------------------------------------
    def clean_leftovers(self) -> list[str]:
        """Remove half-built versions left by a crash (their builder's PID is gone). Returns their names.

        A build in progress in another process (an ingest running beside the gateway) is left alone.
        """
        removed = []
        for tmp in self.root.glob(".tmp-*"):
            if _builder_alive(tmp):
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
        return removed

    def list_versions(self) -> list[dict[str, Any]]:
        """Every complete version, oldest first, with its manifest and whether it is active."""
        active = self.active_version()
        out = []
        for d in sorted(self.versions_dir.iterdir()):
            manifest_path = d / "manifest.json"
            if not manifest_path.exists():
                continue
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                continue
            out.append({**manifest, "active": d.name == active})
        out.sort(key=lambda m: (m.get("created_at", 0), m.get("version", "")))
        return out

    def active_version(self) -> str | None:
        try:
            return json.loads(self.active_file.read_text())["version"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            raise KBError(f"{self.active_file}: unreadable ({exc})") from exc

    def active_stamp(self) -> float | None:
        """mtime of the ACTIVE pointer, for cheap change polling by a running gateway."""
        try:
            return self.active_file.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def activate(self, version: str) -> dict[str, Any]:
        """Point ACTIVE at ``version`` atomically, after checking it loads (chunks readable, one vector per
        chunk). Raises KBError for an unknown, incomplete or corrupt version; ACTIVE is then unchanged."""
        d = self.versions_dir / version
        if not (d / "manifest.json").exists():
            raise KBError(f"unknown KB version: {version}")
        self.verify(version)
        previous = self.active_version()
        _atomic_write_text(self.active_file, json.dumps(
            {"version": version, "previous": previous, "activated_at": time.time()}))
        log.info("kb activated", extra={"event": "kb_activated", "kb_version": version, "previous": previous})
        return {"version": version, "previous": previous}

    def verify(self, version: str) -> None:
        """Raise KBError unless ``version``'s chunks parse and its vectors (if any) match them one to one."""
        d = self.versions_dir / version
        try:
            table = ChunkTable(d / "chunks.jsonl")
            n = len(table)
            table.close()
            vectors_path = d / "vectors.npy"
            if vectors_path.exists():
                rows = np.load(vectors_path, mmap_mode="r").shape[0]
                if rows != n:
                    raise KBCorrupt(f"KB version {version} is corrupt: {rows} vectors for {n} chunks")
        except (OSError, ValueError) as exc:
            raise KBCorrupt(f"KB version {version} is unreadable: {exc}") from exc

    def rollback(self) -> dict[str, Any]:
        """Activate the version created before the active one."""
        versions = [v["version"] for v in self.list_versions()]
        active = self.active_version()
        if active not in versions:
            raise KBError("no active version to roll back from")
        idx = versions.index(active)
        if idx == 0:
            raise KBError(f"{active} is the oldest version; nothing to roll back to")
        return self.activate(versions[idx - 1])

    def prune(self) -> list[str]:
        """Delete the oldest inactive versions beyond ``keep_versions``."""
        versions = self.list_versions()
        removed = []
        excess = len(versions) - self.keep_versions
        for v in versions:
            if excess <= 0:
                break
            if v["active"]:
                continue
            shutil.rmtree(self.versions_dir / v["version"], ignore_errors=True)
            removed.append(v["version"])
            excess -= 1
        return removed

    # ---- loading --------------------------------------------------------------------------
    def load(self, version: str | None = None) -> KBVersion | None:
        """Load ``version`` (default: the active one). None when there is no active version.

        A missing or corrupt keyword index does not fail the load: it is reported in
        ``keyword_error`` so the gateway can label the degradation.
        """
        version = version or self.active_version()
        if version is None:
            return None
        d = self.versions_dir / version
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            chunks = ChunkTable(d / "chunks.jsonl")
        except (OSError, ValueError, TypeError) as exc:
            raise KBError(f"KB version {version} is unreadable: {exc}") from exc
        kb = KBVersion(version=version, path=d, manifest=manifest, chunks=chunks)
        try:
            kb.keyword_index = KeywordIndex.load(d / "keyword")
        except Exception as exc:  # typed IndexMissing/IndexCorrupt and anything else: labelled, not fatal
            kb.keyword_error = f"{type(exc).__name__}: {exc}"
            log.warning("keyword index unusable", extra={"event": "keyword_index_unusable",
                                                          "kb_version": version, "error": kb.keyword_error})
        return kb

    def cached_vectors(self, embedder_name: str, dim: int | None) -> dict[str, np.ndarray]:
        """Vectors of the active version by chunk id, if made by the same embedder (re-ingest cache)."""
        kb_version = self.active_version()
        if kb_version is None:
            return {}
        d = self.versions_dir / kb_version
        try:
            made_by = json.loads((d / "manifest.json").read_text()).get("embedder") or {}
        except (OSError, ValueError):
            return {}
        if made_by.get("name") != embedder_name or (dim and made_by.get("dim") not in (None, dim)):
            return {}
        try:
            vectors = np.load(d / "vectors.npy", mmap_mode="r")
            ids = [json.loads(line)["id"] for line in (d / "chunks.jsonl").read_text().splitlines() if line]
        except (OSError, ValueError, KeyError):
            return {}
        if len(ids) != vectors.shape[0]:
            return {}
        return {cid: vectors[i] for i, cid in enumerate(ids)}

    # ---- ingest ---------------------------------------------------------------------------
    def chunk_paths(self, paths: Iterable[Path], *, chunk_chars: int, overlap: int,
                    root: Path | None = None) -> list[Chunk]:
        chunks: list[Chunk] = []
        for source, title, text in load_documents([Path(p) for p in paths], root=root):
            chunks.extend(chunk_document(text, source=source, title=title, chunk_chars=chunk_chars,
                                         overlap=overlap))
        if not chunks:
            raise KBError("nothing to ingest: no .md/.txt/.html documents with text under the given paths")
        return chunks

    async def ingest(self, paths: Sequence[Path], *, embedder: Embedder | None, chunk_chars: int, overlap: int,
                     batch_size: int = 16, activate: bool = True, upsert: Upsert | None = None,
                     progress: Progress | None = None, label: str = "", root: Path | None = None,
                     seed_vectors: dict[str, np.ndarray] | None = None) -> str:
        """Build a new version from documents under ``paths``; returns its name.

        ``embedder`` None → no vectors (a store that vectorizes itself). ``upsert(chunks, vectors)``
        is awaited per batch for an external store (Weaviate). Vectors of unchanged chunks are
        reused from the active version (embeddings cached by chunk hash).
        """
        chunks = self.chunk_paths(paths, chunk_chars=chunk_chars, overlap=overlap, root=root)
        return await self.create_version(
            chunks, embedder=embedder, batch_size=batch_size, activate=activate, upsert=upsert,
            progress=progress, label=label, seed_vectors=seed_vectors,
            extra={"chunk_chars": chunk_chars, "chunk_overlap": overlap, "paths": [str(p) for p in paths]})

    async def sync_from(self, store: VectorStore, *, activate: bool = True, progress: Progress | None = None,
                        label: str = "synced from vector store") -> str:
        """A new version mirroring every chunk ``store.iterate()`` yields (cursor over the collection).

        For a Weaviate collection this project did not ingest: the keyword index then matches what the
        vector DB holds. No vectors are stored locally.
        """
        progress = progress or (lambda stage, done, total: None)
        chunks: list[Chunk] = []
        async for chunk in store.iterate():
            chunks.append(chunk)
            if len(chunks) % 500 == 0:
                progress("sync", len(chunks), 0)
        if not chunks:
            raise KBError("the vector store returned no objects to sync")
        progress("sync", len(chunks), len(chunks))
        return await self.create_version(chunks, embedder=None, activate=activate, progress=progress, label=label,
                                         extra={"synced_from": store.name})

    async def create_version(self, chunks: list[Chunk], *, embedder: Embedder | None, batch_size: int = 16,
                             activate: bool = True, upsert: Upsert | None = None,
                             progress: Progress | None = None, label: str = "",
                             extra: dict[str, Any] | None = None,
                             seed_vectors: dict[str, np.ndarray] | None = None) -> str:
        """Write ``chunks`` (+ vectors, + keyword index) as a new version, atomically; returns its name.

        Vectors are reused, by chunk id, from the active version (same embedder only) and from
        ``seed_vectors``; only the rest are embedded.
        """
        progress = progress or (lambda stage, done, total: None)
        self.clean_leftovers()
        version = datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        tmp = self.root / f".tmp-{version}"
        tmp.mkdir(parents=True)
        (tmp / BUILDER_FILE).write_text(str(os.getpid()))
        try:
            vectors = None
            reused = 0
            if embedder is not None:
                cache = {**(seed_vectors or {}), **self.cached_vectors(embedder_id(embedder), embedder.dim)}
                vectors_list: list[np.ndarray | None] = [cache.get(c.id) for c in chunks]
                reused = sum(v is not None for v in vectors_list)
                todo = [i for i, v in enumerate(vectors_list) if v is None]
                progress("embed", 0, len(todo))
                for start in range(0, len(todo), batch_size):
                    idx = todo[start:start + batch_size]
                    out = await embedder.embed_passages([chunks[i].text for i in idx])
                    for j, i in enumerate(idx):
                        vectors_list[i] = out[j]
                    progress("embed", min(start + batch_size, len(todo)), len(todo))
                vectors = np.vstack(vectors_list).astype(np.float32)
                await asyncio.to_thread(_save_synced, tmp / "vectors.npy", vectors)
            if upsert is not None:
                for start in range(0, len(chunks), 100):
                    await upsert(chunks[start:start + 100],
                                 None if vectors is None else vectors[start:start + 100])
                    progress("upsert", min(start + 100, len(chunks)), len(chunks))
            # Off the event loop: at 100k chunks this write alone stalled a serving loop for over a second.
            await asyncio.to_thread(_write_chunks, tmp / "chunks.jsonl", chunks)
            progress("keyword_index", 0, len(chunks))
            # tantivy's writer is native and releases the GIL: keep the loop free while it builds.
            index = await asyncio.to_thread(KeywordIndex.build, chunks)
            await asyncio.to_thread(index.save, tmp / "keyword")
            progress("keyword_index", len(chunks), len(chunks))
            manifest = {
                "version": version, "label": label, "created_at": time.time(),
                "chunk_count": len(chunks), "document_count": len({c.source for c in chunks}),
                "embedder": None if embedder is None else {"name": embedder_id(embedder), "dim": embedder.dim},
                "reused_vectors": reused, "parent": self.active_version(), **(extra or {}),
            }
            _atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
            (tmp / BUILDER_FILE).unlink()
            fsync_dir(tmp)
            os.replace(tmp, self.versions_dir / version)
            fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if activate:
            self.activate(version)
            await asyncio.to_thread(self.prune)
        return version
