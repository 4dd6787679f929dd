"""Answer cache with stale-if-error: a fresh hit skips the LLM; a stale one stands in when it is down.

Backed by diskcache with ``JSONDisk`` (its default pickle serializer has CVE-2025-69872; JSON cannot
execute code on load) in a directory only the service user can read (0700). Eviction is diskcache's
``least-recently-stored``: reads never write to SQLite, so a get (~11 µs) stays on the event loop,
while a set (~150 µs, fsync-bound) runs in a worker thread.

The cache is optional by design: a corrupted database, an unwritable directory or any other failure
degrades it to "no cache" — ``get`` returns ``None``, ``put`` does nothing — and is counted in
``errors``, reported to ``on_error`` and reflected in ``healthy``. It never raises to the caller.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import diskcache

DIR_MODE = 0o700
_SQLITE_TIMEOUT_S = 2.0  # bound any wait on a locked database; the default is 60 s
_TRAILING_PUNCT = re.compile(r"[\s?!.,;:…。？！]+$")


def normalise_query(query: str) -> str:
    """The query as the cache sees it: NFKC, casefolded, whitespace collapsed, trailing punctuation dropped."""
    q = " ".join(unicodedata.normalize("NFKC", query).casefold().split())
    return _TRAILING_PUNCT.sub("", q)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What makes two answers interchangeable: the normalised query, the KB version and the params
    that change the answer (``top_k``, ``filters``, ``model``…, as a JSON-able dict)."""

    query: str
    kb_version: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of (normalised query, kb_version, params with sorted keys)."""
        canonical = json.dumps({"q": normalise_query(self.query), "kb": self.kb_version, "p": self.params},
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached answer. ``created_at`` is wall-clock epoch seconds; ``put`` stamps it when ``None``.
    ``vectors``: the vector set whose retrieval the answer was made from (``fast`` | ``quality``; None when
    unknown: no vectors, an external store, an entry older than the field)."""

    answer: str
    sources: list[dict[str, Any]]
    mode: str
    kb_version: str
    created_at: float | None = None
    vectors: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CacheEntry":
        """Raises ``KeyError``/``TypeError``/``ValueError`` for a value that is not a cache entry."""
        vectors = d.get("vectors")
        return cls(answer=str(d["answer"]), sources=list(d["sources"]), mode=str(d["mode"]),
                   kb_version=str(d["kb_version"]), created_at=float(d["created_at"]),
                   vectors=None if vectors is None else str(vectors))


@dataclass(frozen=True, slots=True)
class CacheHit:
    entry: CacheEntry
    age_s: float
    fresh: bool  # age_s <= fresh_ttl_s; otherwise usable only as a stale-if-error answer


def hit_of(entry: CacheEntry, now: float, fresh_ttl_s: float, stale_ttl_s: float) -> CacheHit | None:
    """``entry`` seen at wall-clock ``now``: a fresh or stale hit, or None once older than ``stale_ttl_s``."""
    age = max(0.0, now - (entry.created_at or 0.0))
    if age > stale_ttl_s:
        return None
    return CacheHit(entry=entry, age_s=age, fresh=age <= fresh_ttl_s)


class AnswerStore(Protocol):
    """What the pipeline needs from an answer cache (diskcache here, Redis in ``fallback.redis_cache``).

    ``get``/``put`` never raise: a broken backend is a miss / a no-op, counted in ``errors``.
    """

    errors: int

    @property
    def healthy(self) -> bool: ...

    async def get(self, key: CacheKey) -> CacheHit | None: ...

    async def put(self, key: CacheKey, entry: CacheEntry) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class AnswerCache:
    """Disk-backed answer cache keyed by ``CacheKey``.

    ``fresh_ttl_s``: a hit this young may be served instead of calling the LLM. ``stale_ttl_s``: older
    than this, an entry is a miss even when the LLM is down. ``size_limit_bytes``: diskcache evicts
    the least recently stored entries beyond it. ``clock`` returns wall-clock seconds (injectable for
    tests); ``on_error(exc)`` is called on the caller's thread for every failure.
    """

    def __init__(self, dir: Path, *, fresh_ttl_s: float, stale_ttl_s: float, size_limit_bytes: int,
                 clock: Callable[[], float] = time.time,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if not 0 <= fresh_ttl_s <= stale_ttl_s:
            raise ValueError(f"need 0 <= fresh_ttl_s <= stale_ttl_s, got {fresh_ttl_s}, {stale_ttl_s}")
        self.dir = Path(dir)
        self.fresh_ttl_s = fresh_ttl_s
        self.stale_ttl_s = stale_ttl_s
        self.size_limit_bytes = size_limit_bytes
        self.errors = 0
        self.last_error: BaseException | None = None
        self._clock = clock
        self._on_error = on_error
        self._read_ok = self._write_ok = True
        self._cache: diskcache.Cache | None = None
        try:
            self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            mode = stat.S_IMODE(self.dir.stat().st_mode)
            if mode & 0o077:  # a pre-existing dir open to others: cached answers are for the service only
                os.chmod(self.dir, mode & DIR_MODE)  # (owner bits kept: a read-only dir stays read-only)
            self._cache = diskcache.Cache(
                str(self.dir), disk=diskcache.JSONDisk, size_limit=size_limit_bytes,
                eviction_policy="least-recently-stored", timeout=_SQLITE_TIMEOUT_S)
        except Exception as exc:  # any failure to open means "no cache", never a failed start-up
            self._fail(exc)

    @property
    def healthy(self) -> bool:
        """False while the cache could not be opened or its last read or last write failed."""
        return self._cache is not None and self._read_ok and self._write_ok

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = exc
        if self._on_error is not None:
            self._on_error(exc)

    async def get(self, key: CacheKey) -> CacheHit | None:
        """The entry for ``key`` if younger than ``stale_ttl_s``, with its age and freshness; else None.

        Runs on the event loop (a diskcache read is ~11 µs and never writes). Never raises.
        """
        if self._cache is None:
            return None
        try:
            raw = self._cache.get(key.digest(), default=None)
            entry = None if raw is None else CacheEntry.from_json(raw)
        except Exception as exc:  # corrupted database or value: count it, answer as a miss
            self._read_ok = False
            self._fail(exc)
            return None
        self._read_ok = True
        if entry is None:
            return None
        return hit_of(entry, self._clock(), self.fresh_ttl_s, self.stale_ttl_s)

    async def put(self, key: CacheKey, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key`` (in a worker thread; ~150 µs). Never raises; a failure is a no-op."""
        if self._cache is None:
            return
        if entry.created_at is None:
            entry = replace(entry, created_at=self._clock())
        try:
            value = entry.to_json()
            json.dumps(value)  # fail here, on the caller's thread, for a non-JSON-able entry
            # diskcache's own expiry (real time) only reclaims space; freshness uses self._clock
            await asyncio.to_thread(self._cache.set, key.digest(), value, expire=self.stale_ttl_s)
        except Exception as exc:  # unwritable dir, full disk, corrupted database: degrade to no cache
            self._write_ok = False
            self._fail(exc)
            return
        self._write_ok = True

    def snapshot(self) -> dict[str, Any]:
        """What /health shows: backend, health and error count."""
        return {"backend": "diskcache", "healthy": self.healthy, "errors": self.errors}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    async def aclose(self) -> None:
        self.close()
