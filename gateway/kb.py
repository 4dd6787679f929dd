"""Knowledge-base versions on disk: ingest into a new version, activate atomically, roll back.

Layout under ``<data_dir>/kb``::

    versions/<version>/manifest.json   what went in (counts, embedder, chunking, parent version)
    versions/<version>/chunks.jsonl    one Chunk record per line
    versions/<version>/vectors.npy     float32 (n, dim), row i ↔ line i (embedded store only)
    versions/<version>/vectors.fast.npy  fast-tier rows of a progressive version (``gateway.progressive``):
                                       served until ``vectors.npy`` (quality) is complete and in the manifest
    versions/<version>/keyword/        the BM25 index for this version
    ACTIVE                             {"version": "..."} — replaced atomically (write tmp + os.replace)

A version directory is built under ``.tmp-*`` and renamed into ``versions/`` only when complete, so a
crash mid-ingest leaves the previous version active and usable; leftovers are removed at start-up.

A version is named by its directory (a copied directory is another version, whatever its manifest
says). The manifest records the size and sha256 of ``chunks.jsonl`` and ``vectors.npy``; loading
copies both into private, unlinked files while checking them, and serves from the copies (and from a
checked copy of the keyword index): a version file truncated or rewritten under a running gateway
cannot reach it (a memory map of a file that shrinks kills the process with SIGBUS).
"""
from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator, Sequence, cast

import numpy as np

from fallback.bm25 import BUILD_PREFIX, KeywordIndex, fsync_dir
from fallback.chunking import chunk_document, load_documents
from fallback.chunktable import ChunkTable
from fallback.documents import Chunk
from fallback.leftovers import owner_tag, pid_alive, remove_dead
from gateway.embedjournal import JOURNAL_DIR, EmbedJournal

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


class KBInvalidName(KBError):
    """Not a version name: a path, ``.``/``..``, a hidden name, NUL, or over 255 bytes."""


class KBStorageError(KBError):
    """The disk refused a write (full, over quota, read-only); nothing half-written was left behind."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_

    @property
    def no_space(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


MAX_VERSION_NAME_BYTES = 255  # NAME_MAX of Linux filesystems
FAST_VECTORS = "vectors.fast.npy"  # a progressive version's fast-tier vectors (manifest "vectors": "fast")
# checksummed in the manifest, served from private copies
VERSION_FILES = ("chunks.jsonl", "vectors.npy", FAST_VECTORS)
SERVING_PREFIX = ".serving-"  # + owner tag: private copies being made (unlinked once open)
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def check_version_name(name: object) -> str:
    """``name`` if it can only name a directory directly under ``versions/``; else KBInvalidName."""
    if not isinstance(name, str) or not name:
        raise KBInvalidName("a version name must be a non-empty string")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise KBInvalidName("a version name must be valid Unicode") from None
    if size > MAX_VERSION_NAME_BYTES:
        raise KBInvalidName(f"a version name has at most {MAX_VERSION_NAME_BYTES} bytes (got {size})")
    if "/" in name or "\\" in name or "\0" in name or name.startswith(".") or name != name.strip():
        raise KBInvalidName(f"not a version name: {name[:80]!r} (a directory name under versions/, "
                            "no path, not hidden)")
    return name


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of ``path`` (read in 1 MB blocks; call it off the event loop)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return {"bytes": n, "sha256": h.hexdigest()}


def _storage_error(exc: OSError, what: str) -> KBError:
    if exc.errno in _WRITE_ERRNOS:
        return KBStorageError(f"{what}: {exc.strerror or exc}", exc.errno)
    return KBError(f"{what}: {exc.strerror or exc}")


def _private_copy(src: Path, expect: dict[str, Any] | None, into: Path) -> Any:
    """An open, unlinked copy of ``src`` (a binary file at offset 0), checked against ``expect``
    (``bytes`` + ``sha256``) while copying. Nobody else can open it by name, so it cannot shrink
    under a memory map. Raises KBCorrupt (missing, unreadable or different from the manifest) or
    KBStorageError (the copy could not be written: nothing is left behind)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=into, prefix=f"{SERVING_PREFIX}{owner_tag()}-")
    except OSError as exc:
        raise _storage_error(exc, f"private copy of {src.name}") from exc
    os.unlink(tmp)
    try:
        h = hashlib.sha256()
        n = 0
        try:
            src_fh = open(src, "rb")  # noqa: SIM115 - entered just below, after the open error is mapped
        except OSError as exc:
            raise KBCorrupt(f"{src.parent.name}/{src.name}: {exc.strerror or exc}") from exc
        with src_fh:
            while True:
                try:
                    block = src_fh.read(1 << 20)
                except OSError as exc:
                    raise KBCorrupt(f"{src.parent.name}/{src.name}: {exc.strerror or exc}") from exc
                if not block:
                    break
                h.update(block)
                n += len(block)
                view = memoryview(block)
                while view:  # unbuffered: a full disk fails here, not later in a close that flushes
                    try:
                        view = view[os.write(fd, view):]
                    except OSError as exc:
                        raise _storage_error(exc, f"private copy of {src.name}") from exc
        if expect is not None and (n != expect.get("bytes") or h.hexdigest() != expect.get("sha256")):
            raise KBCorrupt(f"{src.parent.name}/{src.name} does not match its manifest "
                            f"({n} bytes, expected {expect.get('bytes')})")
        os.lseek(fd, 0, os.SEEK_SET)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _remove_private_copy(copy: Path) -> None:
    """Remove a keyword index's private copy, which the open index outlives (it maps its files).

    tantivy's reader starts a meta-file watcher thread whose first pass reloads the index and re-creates
    ``.tantivy-meta.lock`` in it: when that lands while ``rmtree`` empties the directory, the last ``rmdir``
    fails and an empty copy would stay for the process's life (seen under load: one per ~700 loads). The
    watcher reloads only once (a deleted meta file never changes again), so a second pass finds it done."""
    for _ in range(3):
        shutil.rmtree(copy, ignore_errors=True)
        if not os.path.lexists(copy):
            return
    log.warning("private copy of a keyword index left behind; removed at the next start",
                extra={"event": "kb_private_copy_left", "path": str(copy)})


@contextmanager
def _no_gc_pass() -> Iterator[None]:
    """Loading a version allocates a few objects per chunk; a cyclic-GC pass triggered meanwhile scans
    every object of the process with the GIL held, stalling the event loop whatever thread runs the load
    (bench/kb_activate.py at 50k chunks: 70-230 ms, the whole remaining loop lag). So no pass runs during
    the load. Nothing is frozen afterwards: ``gc.freeze`` made every reference cycle alive at that moment
    immortal (a cycle through each stopped gateway's embedder grew a full test run to 24 GB, OOM-killed),
    and it saved ~7 ms of GC per 50k-chunk activation (bench.kb_activate, 2026-12-01)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of an open ``.npy`` file; ValueError if malformed."""
    fh.seek(0)
    major, _minor = np.lib.format.read_magic(fh)
    if major == 1:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif major in (2, 3):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format {major}")
    return shape, fortran, dtype, fh.tell()


def _map_vectors(fh: Any) -> np.ndarray:
    """The float matrix in an open ``.npy`` private copy, memory-mapped read-only (``fh`` is closed: the
    map keeps its own handle); ValueError if it is not a 2-D float array of exactly its header's size."""
    with fh:
        return _map_open_vectors(fh)


def _map_open_vectors(fh: Any) -> np.ndarray:
    shape, fortran, dtype, offset = _npy_header(fh)
    if len(shape) != 2 or dtype.hasobject or dtype.kind != "f":
        raise ValueError(f"vectors.npy holds {dtype} {shape}, not a 2-D float matrix")
    size = os.fstat(fh.fileno()).st_size
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        raise ValueError(f"vectors.npy is {size} bytes, its header says {expected}")
    if shape[0] == 0 or shape[1] == 0:
        return np.zeros(shape, dtype=np.float32)
    return np.memmap(fh, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


@dataclass(frozen=True)
class KBDegraded:
    """Why the served version is not (all of) the one ACTIVE names: ``reason`` is ``fallback_version``
    (an older verified version) or ``keyword_only`` (only a keyword index was intact)."""

    reason: str
    active: str | None  # what ACTIVE names (None: missing or unreadable)
    error: str  # why the active version could not be served

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "active": self.active, "error": self.error}


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
    vectors: np.ndarray | None = None  # rows ↔ chunks, mapped from a private copy (embedded store)
    degraded: KBDegraded | None = None  # set when this is not the version ACTIVE names
    vectors_fast: np.ndarray | None = None  # a progressive version's fast-tier rows, until its quality set is done

    @property
    def created_at(self) -> float:
        return float(self.manifest.get("created_at", 0.0))

    @property
    def vectors_tier(self) -> str | None:
        """``fast`` (a progressive version whose quality vectors are not complete), ``quality``, or None
        (no vectors: keyword-only, or an external store's version)."""
        if self.vectors_fast is not None:
            return "fast"
        return "quality" if self.vectors is not None else None


def is_fast_phase(manifest: dict[str, Any]) -> bool:
    """A progressive version still waiting for (part of) its quality vectors."""
    return manifest.get("vectors") == "fast"


BUILDER_FILE = ".builder-pid"


def _builder_alive(tmp: Path) -> bool:
    """Whether the process that is building ``tmp`` still runs (no PID file: a crashed or old build)."""
    try:
        pid = int((tmp / BUILDER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False  # ours, from an earlier failed attempt in this process
    return pid_alive(pid)


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
    """Write ``path`` via a temp sibling + rename; on any failure (disk full) the temp file is removed and
    ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        """Remove what crashed writers left behind: half-built versions (their builder's PID is gone),
        ``.ACTIVE.*.tmp`` pointers, private copies of dead processes, and keyword-index builds in the
        temp dir whose process is gone. Returns their names.

        A build in progress in another process (an ingest running beside the gateway) is left alone.
        """
        removed = []
        for tmp in self.root.glob(".tmp-*"):
            if _builder_alive(tmp):
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
        # An ACTIVE temp exists only between its write and its rename (microseconds): one found at
        # start is a crashed write.
        for tmp in self.root.glob(f".{self.active_file.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
        removed += remove_dead(self.root, SERVING_PREFIX)
        removed += remove_dead(Path(tempfile.gettempdir()), BUILD_PREFIX)
        return removed

    def version_dir(self, version: object) -> Path:
        """The directory of an existing version; KBInvalidName for a name that is not one, KBError when
        no such version exists (a symlink does not count: a version lives under ``versions/``)."""
        d = self.versions_dir / check_version_name(version)
        if d.is_symlink() or not d.is_dir():
            raise KBError(f"unknown KB version: {version}")
        return d

    def version_names(self) -> list[str]:
        """Directory names of every version (complete or not), newest first (manifest ``created_at``,
        else the directory's mtime)."""
        out = []
        try:
            entries = list(self.versions_dir.iterdir())
        except OSError:
            return []
        for d in entries:
            if d.name.startswith(".") or d.is_symlink() or not d.is_dir():
                continue
            try:
                created = float(json.loads((d / "manifest.json").read_text())["created_at"])
            except (OSError, ValueError, KeyError, TypeError):
                try:
                    created = d.stat().st_mtime
                except OSError:
                    continue
            out.append((created, d.name))
        return [name for _, name in sorted(out, reverse=True)]

    def list_versions(self) -> list[dict[str, Any]]:
        """Every version with a readable manifest, oldest first, named by its directory, with whether it is
        active (``manifest_version`` when the manifest names another: a copied directory)."""
        active = self.active_or_none()
        out = []
        for name in reversed(self.version_names()):
            try:
                manifest = json.loads((self.versions_dir / name / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(manifest, dict):
                continue
            entry = {**manifest, "version": name, "active": name == active}
            if manifest.get("version") != name:
                entry["manifest_version"] = manifest.get("version")
            out.append(entry)
        return out

    def active_version(self) -> str | None:
        """What ACTIVE names; None when there is no ACTIVE; KBError when it is unreadable or garbage."""
        try:
            version = json.loads(self.active_file.read_text())["version"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KBError(f"ACTIVE pointer unreadable ({type(exc).__name__})") from exc
        try:
            return check_version_name(version)
        except KBInvalidName as exc:
            raise KBError(f"ACTIVE pointer unreadable ({exc})") from None

    def active_or_none(self) -> str | None:
        """:meth:`active_version`, with an unreadable ACTIVE read as none."""
        try:
            return self.active_version()
        except KBError:
            return None

    def active_stamp(self) -> float | None:
        """mtime of the ACTIVE pointer, for cheap change polling by a running gateway."""
        try:
            return self.active_file.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def activate(self, version: str, *, verified: bool = False) -> dict[str, Any]:
        """Point ACTIVE at ``version`` atomically, after checking it (sizes and checksums from its
        manifest; one vector per chunk). ``verified``: the caller has just loaded it (skip the check).
        Raises KBInvalidName, KBError for an unknown version, KBCorrupt for a damaged one,
        KBStorageError when ACTIVE cannot be written (disk full); ACTIVE is then unchanged."""
        if verified:
            self.version_dir(version)
        else:
            self.verify(version)
        previous = self.active_or_none()
        try:
            _atomic_write_text(self.active_file, json.dumps(
                {"version": version, "previous": previous, "activated_at": time.time()}))
        except OSError as exc:
            raise _storage_error(exc, "cannot write ACTIVE") from exc
        log.info("kb activated", extra={"event": "kb_activated", "kb_version": version, "previous": previous})
        return {"version": version, "previous": previous}

    def _manifest(self, d: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except FileNotFoundError:
            raise KBCorrupt(f"KB version {d.name} has no manifest.json") from None
        except (OSError, ValueError) as exc:
            raise KBCorrupt(f"KB version {d.name}: unreadable manifest ({type(exc).__name__})") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
            raise KBCorrupt(f"KB version {d.name}: malformed manifest")
        return manifest

    def read_manifest(self, version: str) -> dict[str, Any]:
        """``version``'s manifest as it is on disk now. Reads files: call it off the event loop. Raises
        KBInvalidName / KBError (no such version), KBCorrupt (missing or unreadable manifest)."""
        return self._manifest(self.version_dir(version))

    def verify(self, version: str) -> None:
        """Raise unless ``version``'s files match their manifest (size + sha256) and its vectors (if any)
        match its chunks one to one. Reads every byte: call it off the event loop. Versions written
        before checksums were recorded are checked by parsing their chunks."""
        d = self.version_dir(version)
        manifest = self._manifest(d)
        files = manifest.get("files") or {}
        try:
            for name in VERSION_FILES:
                if name in files and file_digest(d / name) != {k: files[name].get(k) for k in ("bytes", "sha256")}:
                    raise KBCorrupt(f"KB version {version} is corrupt: {name} does not match its manifest")
            if "chunks.jsonl" in files and isinstance(manifest.get("chunk_count"), int):
                n = manifest["chunk_count"]
            else:
                table = ChunkTable(d / "chunks.jsonl")
                n = len(table)
                table.close()
            for name in (FAST_VECTORS,) if is_fast_phase(manifest) else ("vectors.npy",):
                vectors_path = d / name
                if vectors_path.exists() or name == FAST_VECTORS:
                    with open(vectors_path, "rb") as fh:
                        rows = _npy_header(fh)[0][0]
                    if rows != n:
                        raise KBCorrupt(f"KB version {version} is corrupt: {rows} vectors for {n} chunks")
        except (OSError, ValueError, IndexError) as exc:
            raise KBCorrupt(f"KB version {version} is unreadable: {type(exc).__name__}: {exc}") from exc

    def rollback_target(self) -> str:
        """The version created before the active one; KBError when there is none."""
        versions = [v["version"] for v in self.list_versions()]
        active = self.active_or_none()
        if active not in versions:
            raise KBError("no active version to roll back from")
        idx = versions.index(active)
        if idx == 0:
            raise KBError(f"{active} is the oldest version; nothing to roll back to")
        return versions[idx - 1]

    def rollback(self) -> dict[str, Any]:
        """Activate the version created before the active one."""
        return self.activate(self.rollback_target())

    def prune(self) -> list[str]:
        """Delete the oldest inactive versions beyond ``keep_versions`` (by directory name)."""
        versions = self.list_versions()
        removed = []
        excess = len(versions) - self.keep_versions
        for v in versions:
            if excess <= 0:
                break
            if v["active"]:
                continue
            if is_fast_phase(v) and (v.get("embedder") or {}).get("name"):  # its unfinished upgrade's journal
                made_by = v["embedder"]
                self.upgrade_journal(v["version"], made_by["name"], made_by.get("dim")).clear()
            shutil.rmtree(self.versions_dir / v["version"], ignore_errors=True)
            removed.append(v["version"])
            excess -= 1
        return removed

    # ---- loading --------------------------------------------------------------------------
    def load(self, version: str | None = None) -> KBVersion | None:
        """Load ``version`` (default: the active one), verified, from private copies. None when there
        is no active version. Reads every byte: call it off the event loop.

        Raises KBInvalidName / KBError (unknown), KBCorrupt (a file differs from the manifest, chunks
        and vectors disagree) or KBStorageError (no room for the private copies). A missing or corrupt
        keyword index does not fail the load: it is reported in ``keyword_error`` so the gateway can
        label the degradation.
        """
        version = version if version is not None else self.active_version()
        if version is None:
            return None
        with _no_gc_pass():
            return self._load(version)

    def _load(self, version: str) -> KBVersion:
        d = self.version_dir(version)
        manifest = self._manifest(d)
        files = manifest.get("files") or {}
        try:
            chunks = ChunkTable(_private_copy(d / "chunks.jsonl", files.get("chunks.jsonl"), self.root))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise KBCorrupt(f"KB version {version}: chunks.jsonl unreadable ({type(exc).__name__})") from exc
        vectors = None
        try:
            count = manifest.get("chunk_count")
            if isinstance(count, int) and count != len(chunks):
                raise KBCorrupt(f"KB version {version} is corrupt: {len(chunks)} chunks, manifest says {count}")
            # A fast-phase version serves its fast set; a vectors.npy beside it is an upgrade that crashed
            # between writing it and the manifest: not trusted (the upgrade rewrites it).
            name = FAST_VECTORS if is_fast_phase(manifest) else "vectors.npy"
            if name in files or (d / name).exists() or name == FAST_VECTORS:
                try:
                    vectors = _map_vectors(_private_copy(d / name, files.get(name), self.root))
                except (OSError, ValueError) as exc:
                    raise KBCorrupt(f"KB version {version}: {name} unreadable ({exc})") from exc
                if vectors.shape[0] != len(chunks):
                    raise KBCorrupt(f"KB version {version} is corrupt: {vectors.shape[0]} vectors for "
                                    f"{len(chunks)} chunks")
        except BaseException:
            chunks.close()
            raise
        if is_fast_phase(manifest):
            kb = KBVersion(version=version, path=d, manifest=manifest, chunks=chunks, vectors_fast=vectors)
        else:
            kb = KBVersion(version=version, path=d, manifest=manifest, chunks=chunks, vectors=vectors)
        try:
            kb.keyword_index = self._load_keyword(d)
        except KBStorageError:
            raise
        except Exception as exc:  # typed IndexMissing/IndexCorrupt and anything else: labelled, not fatal
            kb.keyword_error = f"{type(exc).__name__}: {exc}"
            log.warning("keyword index unusable", extra={"event": "keyword_index_unusable",
                                                          "kb_version": version, "error": kb.keyword_error})
        return kb

    def _load_keyword(self, d: Path) -> KeywordIndex:
        """The keyword index of version dir ``d``, loaded from a checked private copy (tantivy maps its
        files: the copy is removed once open, which a memory map survives, unlike a truncation)."""
        src = d / "keyword"
        if not src.is_dir() or src.is_symlink():
            return KeywordIndex.load(src)  # raises IndexMissing with the usual message
        copy = self.root / f"{SERVING_PREFIX}{owner_tag()}-{uuid.uuid4().hex[:8]}"
        try:
            try:
                shutil.copytree(src, copy / "keyword", symlinks=True)
            except OSError as exc:
                raise _storage_error(exc, "private copy of the keyword index") from exc
            except shutil.Error as exc:
                raise KBCorrupt(f"keyword index of {d.name} unreadable: {exc}") from exc
            return KeywordIndex.load(copy / "keyword")
        finally:
            _remove_private_copy(copy)

    def load_serving(self) -> KBVersion | None:
        """What a starting gateway should serve: the active version; else the newest version that
        verifies (``degraded.reason == "fallback_version"``); else the newest intact keyword index alone
        (``"keyword_only"``: no chunks, no vectors). None when there is no version and no ACTIVE.

        Raises KBError when versions exist but nothing of them is usable, KBStorageError when the
        private copies cannot be written (a full disk is not a damaged version).
        """
        problems: list[str] = []
        try:
            active = self.active_version()
        except KBError as exc:
            active = None
            problems.append(str(exc))
        names = self.version_names()
        if active is not None:
            try:
                return self.load(active)
            except KBStorageError:
                raise
            except KBError as exc:
                problems.append(str(exc))
        elif not names and not problems:
            return None
        elif not problems:
            problems.append("no ACTIVE pointer")
        for name in names:
            if name == active:
                continue
            try:
                kb = self.load(name)
            except KBStorageError:
                raise
            except KBError as exc:
                problems.append(str(exc))
                continue
            assert kb is not None, "load(name) returns the version or raises"
            kb.degraded = KBDegraded("fallback_version", active, "; ".join(problems))
            return kb
        for name in ([active] if active in names else []) + [n for n in names if n != active]:
            d = self.versions_dir / name
            try:
                index = self._load_keyword(d)
            except KBStorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - typed index errors and anything else: try the next
                problems.append(f"{name} keyword index: {exc}")
                continue
            try:
                manifest = self._manifest(d)
            except KBCorrupt:
                manifest = {"created_at": index.built_at}
            return KBVersion(version=name, path=d, manifest=manifest, chunks=ChunkTable.empty(),
                             keyword_index=index,
                             degraded=KBDegraded("keyword_only", active, "; ".join(problems)))
        raise KBError("no usable KB version: " + "; ".join(problems))

    def cached_vectors(self, embedder_name: str, dim: int | None) -> dict[str, np.ndarray]:
        """Vectors of the active version by chunk id, if made by the same embedder (re-ingest cache)."""
        kb_version = self.active_or_none()
        if kb_version is None:
            return {}
        d = self.versions_dir / kb_version
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            made_by = manifest.get("embedder") or {}
        except (OSError, ValueError, AttributeError):
            return {}
        if made_by.get("name") != embedder_name or (dim and made_by.get("dim") not in (None, dim)):
            return {}
        if is_fast_phase(manifest):  # its quality vectors so far are in its upgrade journal
            return self.upgrade_journal(kb_version, embedder_name, dim).load()
        try:
            # Read, not mapped: a file truncated meanwhile is a short read (ValueError), never a SIGBUS.
            vectors = np.load(d / "vectors.npy")
            ids = [json.loads(line)["id"] for line in (d / "chunks.jsonl").read_text().splitlines() if line]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return {}
        if vectors.ndim != 2:
            return {}
        if len(ids) != vectors.shape[0]:
            return {}
        return {cid: vectors[i] for i, cid in enumerate(ids)}

    # ---- progressive ingest ---------------------------------------------------------------
    def ingest_journal(self, embedder: Embedder) -> EmbedJournal:
        """The vectors an ingest with ``embedder`` embedded so far (a killed ingest resumes from them)."""
        return EmbedJournal(self.root / JOURNAL_DIR, embedder_id(embedder), embedder.dim)

    def upgrade_journal(self, version: str, model: str, dim: int | None) -> EmbedJournal:
        """The quality vectors of fast-phase ``version`` embedded so far by ``model`` (:func:`embedder_id`),
        ``dim`` wide: its own journal, so a killed upgrade resumes from it and a later ingest reuses its rows."""
        return EmbedJournal(self.root / JOURNAL_DIR, f"{model}@{version}", dim)

    async def _fast_phase(self, tmp: Path, version: str, chunks: Sequence[Chunk],
                          known: Sequence[np.ndarray | None], embedder: Embedder, fast_embedder: Embedder,
                          progress: Progress) -> dict[str, Any]:
        """Embed every chunk with the fast tier into ``tmp/vectors.fast.npy``; journal the quality vectors
        already ``known`` for the upgrade. Returns the manifest keys of a fast-phase version."""
        batch = 512  # a static model: a few ms per batch, big batches cost nothing
        out: list[np.ndarray] = []
        progress("embed_fast", 0, len(chunks))
        for start in range(0, len(chunks), batch):
            out.append(await fast_embedder.embed_passages([c.text for c in chunks[start:start + batch]]))
            progress("embed_fast", min(start + batch, len(chunks)), len(chunks))
        fast = np.vstack(out).astype(np.float32)
        await asyncio.to_thread(_save_synced, tmp / FAST_VECTORS, fast)
        have = [i for i, v in enumerate(known) if v is not None]
        journal = self.upgrade_journal(version, embedder_id(embedder), embedder.dim)
        journal.clear()
        if have:
            await asyncio.to_thread(journal.append, [chunks[i].id for i in have],
                                    np.vstack([cast("np.ndarray", known[i]) for i in have]))
        return {"vectors": "fast", "fast_embedder": {"name": embedder_id(fast_embedder), "dim": fast_embedder.dim}}

    def finish_upgrade(self, version: str, vectors: np.ndarray, embedder: Embedder) -> dict[str, Any]:
        """Make ``vectors`` (quality, rows ↔ chunks) the version's ``vectors.npy`` and its manifest say
        ``"vectors": "quality"``. Crash-safe: the matrix is written beside, renamed, then the manifest is
        replaced atomically; until that last step a reader still sees (and serves) the fast set. Returns the
        new manifest. Raises KBError (unknown version, rows ≠ chunks, another model), KBStorageError."""
        d = self.version_dir(version)
        manifest = self._manifest(d)
        if (manifest.get("embedder") or {}).get("name") != embedder_id(embedder):
            raise KBError(f"KB version {version} is for {(manifest.get('embedder') or {}).get('name')}, "
                          f"not {embedder_id(embedder)}")
        if vectors.shape[0] != manifest.get("chunk_count"):
            raise KBError(f"{vectors.shape[0]} quality vectors for {manifest.get('chunk_count')} chunks")
        for stale in d.glob(".vectors.npy.*.tmp"):  # an upgrade killed mid-write
            stale.unlink(missing_ok=True)
        tmp = d / f".vectors.npy.{uuid.uuid4().hex}.tmp"
        try:
            _save_synced(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
            os.replace(tmp, d / "vectors.npy")
            fsync_dir(d)
            files = {k: v for k, v in (manifest.get("files") or {}).items() if k != FAST_VECTORS}
            new = {**manifest, "vectors": "quality", "upgraded_at": time.time(),
                   "files": {**files, "vectors.npy": file_digest(d / "vectors.npy")}}
            _atomic_write_text(d / "manifest.json", json.dumps(new, indent=2))
            (d / FAST_VECTORS).unlink(missing_ok=True)  # served from private copies: nobody reads it any more
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _storage_error(exc, f"quality vectors of {version}") from exc
        log.info("kb upgraded to quality vectors", extra={"event": "kb_upgraded", "kb_version": version,
                                                          "chunks": int(vectors.shape[0])})
        return new

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
                     seed_vectors: dict[str, np.ndarray] | None = None, fast_embedder: Embedder | None = None,
                     progressive_min_chunks: int = 1) -> str:
        """Build a new version from documents under ``paths``; returns its name.

        ``embedder`` None → no vectors (a store that vectorizes itself). ``upsert(chunks, vectors)``
        is awaited per batch for an external store (Weaviate). Vectors of unchanged chunks are
        reused from the active version (embeddings cached by chunk hash). ``fast_embedder``: progressive
        (see :meth:`create_version`).
        """
        chunks = self.chunk_paths(paths, chunk_chars=chunk_chars, overlap=overlap, root=root)
        return await self.create_version(
            chunks, embedder=embedder, batch_size=batch_size, activate=activate, upsert=upsert,
            progress=progress, label=label, seed_vectors=seed_vectors, fast_embedder=fast_embedder,
            progressive_min_chunks=progressive_min_chunks,
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
                             seed_vectors: dict[str, np.ndarray] | None = None,
                             fast_embedder: Embedder | None = None, progressive_min_chunks: int = 1) -> str:
        """Write ``chunks`` (+ vectors, + keyword index) as a new version, atomically; returns its name.

        Vectors are reused, by chunk id, from the active version (same embedder only) and from
        ``seed_vectors``; only the rest are embedded.

        Progressive (``fast_embedder`` given and at least ``progressive_min_chunks`` chunks lack a quality
        vector): every chunk is embedded by ``fast_embedder`` into ``vectors.fast.npy`` and the manifest
        says ``"vectors": "fast"``; the quality vectors already known are put in the version's upgrade
        journal, and :mod:`gateway.progressive` embeds the rest later (``vectors.npy``).
        """
        progress = progress or (lambda stage, done, total: None)
        self.clean_leftovers()
        version = datetime.now(UTC).strftime("v%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        progressive: dict[str, Any] = {}
        tmp = self.root / f".tmp-{version}"
        tmp.mkdir(parents=True)
        (tmp / BUILDER_FILE).write_text(str(os.getpid()))
        try:
            vectors = None
            reused = 0
            if embedder is not None:
                journal = self.ingest_journal(embedder)
                cache = {**(seed_vectors or {}), **journal.load(),
                         **self.cached_vectors(embedder_id(embedder), embedder.dim)}
                vectors_list: list[np.ndarray | None] = [cache.get(c.id) for c in chunks]
                reused = sum(v is not None for v in vectors_list)
                todo = [i for i, v in enumerate(vectors_list) if v is None]
                if fast_embedder is not None and len(todo) >= max(1, progressive_min_chunks):
                    progressive = await self._fast_phase(tmp, version, chunks, vectors_list, embedder,
                                                         fast_embedder, progress)
                else:
                    progress("embed", 0, len(todo))
                    for start in range(0, len(todo), batch_size):
                        idx = todo[start:start + batch_size]
                        out = await embedder.embed_passages([chunks[i].text for i in idx])
                        await asyncio.to_thread(journal.append, [chunks[i].id for i in idx], out)  # resumable
                        for j, i in enumerate(idx):
                            vectors_list[i] = out[j]
                        progress("embed", min(start + batch_size, len(todo)), len(todo))
                    vectors = np.vstack(cast("list[np.ndarray]", vectors_list)).astype(np.float32)  # all filled
                    await asyncio.to_thread(_save_synced, tmp / "vectors.npy", vectors)
                    journal.clear()  # the version holds them now (reused by chunk id from the active version)
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
            files = {name: await asyncio.to_thread(file_digest, tmp / name)
                     for name in VERSION_FILES if (tmp / name).exists()}
            manifest = {
                "version": version, "label": label, "created_at": time.time(),
                "chunk_count": len(chunks), "document_count": len({c.source for c in chunks}),
                "embedder": None if embedder is None else {"name": embedder_id(embedder), "dim": embedder.dim},
                "reused_vectors": reused, "parent": self.active_or_none(), **(extra or {}), **progressive,
                "files": files,
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
