"""Answer cache: fresh / stale / expired, key normalisation, JSON on disk, and degrading to no cache."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from fallback.cache import AnswerCache, CacheEntry, CacheKey, normalise_query

FRESH_S, STALE_S = 60.0, 3_600.0
KEY = CacheKey("What is a circuit breaker?", "v1", {"top_k": 5, "filters": {}, "model": "m"})
ENTRY = CacheEntry(answer="It stops calls to a failing dependency [1].",
                   sources=[{"id": "c1", "title": "Resilience", "source": "r.md", "score": 3.2, "retriever": "bm25"}],
                   mode="full", kb_version="v1")


class FakeClock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_cache(path: Path, clock: FakeClock | None = None, errors: list | None = None, **kw) -> AnswerCache:
    kw.setdefault("size_limit_bytes", 10 << 20)
    return AnswerCache(path, fresh_ttl_s=FRESH_S, stale_ttl_s=STALE_S, clock=clock or FakeClock(),
                       on_error=None if errors is None else errors.append, **kw)


async def test_hit_is_fresh_then_stale_then_gone(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path / "c", clock)
    await cache.put(KEY, ENTRY)
    put_at = clock.now

    clock.now = put_at + FRESH_S
    hit = await cache.get(KEY)
    assert hit is not None and hit.fresh and hit.age_s == FRESH_S
    assert hit.entry == CacheEntry(**{**ENTRY.to_json(), "created_at": put_at})

    clock.now = put_at + FRESH_S + 1
    hit = await cache.get(KEY)
    assert hit is not None and not hit.fresh and hit.age_s == FRESH_S + 1  # stale-if-error only

    clock.now = put_at + STALE_S + 1
    assert await cache.get(KEY) is None
    assert cache.healthy and cache.errors == 0


async def test_explicit_created_at_is_kept_and_a_clock_behind_it_means_age_zero(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path / "c", clock)
    await cache.put(KEY, CacheEntry(**{**ENTRY.to_json(), "created_at": clock.now + 30}))
    hit = await cache.get(KEY)
    assert hit is not None and hit.age_s == 0.0 and hit.fresh


@pytest.mark.parametrize("a,b", [
    ("What is a circuit breaker?", "  what IS a   circuit\tbreaker "),
    ("What is a circuit breaker?", "what is a circuit breaker?!..."),
    ("Ｗhat is a circuit breaker", "what is a circuit breaker"),  # NFKC: full-width W
])
def test_equivalent_queries_share_a_key(a: str, b: str) -> None:
    assert CacheKey(a, "v1", {"top_k": 5}).digest() == CacheKey(b, "v1", {"top_k": 5}).digest()


@pytest.mark.parametrize("other", [
    CacheKey("What is a circuit-breaker?", "v1", {"top_k": 5}),  # inner punctuation is meaning
    CacheKey("What is a circuit breaker?", "v2", {"top_k": 5}),  # another KB version
    CacheKey("What is a circuit breaker?", "v1", {"top_k": 6}),  # answer-affecting params
    CacheKey("What is a circuit breaker?", "v1", {"top_k": 5, "model": "other"}),
])
def test_different_questions_versions_or_params_do_not_share_a_key(other: CacheKey) -> None:
    assert CacheKey("What is a circuit breaker?", "v1", {"top_k": 5}).digest() != other.digest()


def test_param_order_does_not_matter() -> None:
    a = CacheKey("q", "v1", {"top_k": 5, "filters": {"lang": "en", "year": 2024}, "model": "m"})
    b = CacheKey("q", "v1", {"model": "m", "filters": {"year": 2024, "lang": "en"}, "top_k": 5})
    assert a.digest() == b.digest()
    assert normalise_query("  Hello,   World?? ") == "hello, world"


async def test_directory_is_private_and_values_are_json_not_pickle(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c")
    await cache.put(KEY, ENTRY)
    cache.close()

    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        (value,) = db.execute("SELECT value FROM Cache").fetchone()
    stored = json.loads(zlib.decompress(value))  # JSONDisk: zlib-compressed JSON; pickle would not parse
    assert stored["answer"] == ENTRY.answer and stored["kb_version"] == "v1"


def test_a_pre_existing_world_readable_dir_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir(mode=0o755)
    os.chmod(tmp_path / "c", 0o755)
    make_cache(tmp_path / "c").close()
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


async def test_sets_run_in_a_worker_thread(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c")
    threads: list[int] = []
    real_set = cache._cache.set

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return real_set(*args, **kwargs)

    cache._cache.set = spy
    await cache.put(KEY, ENTRY)
    assert threads and threads[0] != threading.get_ident()
    assert await cache.get(KEY) is not None


async def test_size_limit_evicts_the_least_recently_stored(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c", size_limit_bytes=256 << 10)
    blob = os.urandom(3_000).hex()  # ~6 KB of JSON that zlib cannot shrink much
    keys = [CacheKey(f"question {i}", "v1", {}) for i in range(120)]  # ~700 KB in total
    for k in keys:
        await cache.put(k, CacheEntry(blob, [], "full", "v1"))

    assert await cache.get(keys[0]) is None
    assert await cache.get(keys[-1]) is not None
    assert cache._cache.volume() <= 2 * (256 << 10)
    assert cache.healthy


async def test_corrupted_database_degrades_to_no_cache(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    cache = make_cache(tmp_path / "c", errors=errors)
    await cache.put(KEY, ENTRY)
    cache.close()
    for f in (tmp_path / "c").iterdir():  # garbage over the sqlite file (and its WAL, if any)
        f.write_bytes(b"this is not a sqlite database" * 200)

    reopened = make_cache(tmp_path / "c", errors=errors)
    assert await reopened.get(KEY) is None
    await reopened.put(KEY, ENTRY)  # no-op, no exception
    assert reopened.healthy is False
    assert reopened.errors >= 1 and isinstance(errors[-1], sqlite3.DatabaseError)


async def test_corruption_under_an_open_cache_is_counted_per_call(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    cache = make_cache(tmp_path / "c", errors=errors)
    await cache.put(KEY, ENTRY)
    assert cache.healthy
    for f in (tmp_path / "c").iterdir():
        f.write_bytes(os.urandom(max(f.stat().st_size, 4096)))

    assert await cache.get(KEY) is None
    await cache.put(KEY, ENTRY)
    assert not cache.healthy and cache.errors == 2 and len(errors) == 2


# Run as a separate process: as root the test must drop CAP_DAC_OVERRIDE (root ignores file modes).
READ_ONLY_PROBE = r"""
import asyncio, ctypes, json, os, sys
if os.geteuid() == 0:
    class Hdr(ctypes.Structure): _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure): _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                                              ("inheritable", ctypes.c_uint32)]
    libc, hdr, data = ctypes.CDLL(None, use_errno=True), Hdr(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(hdr), data) == 0
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
    data[0].effective &= keep
    data[0].permitted &= keep
    assert libc.capset(ctypes.byref(hdr), data) == 0
from pathlib import Path
from fallback.cache import AnswerCache, CacheEntry, CacheKey
async def main():
    errors = []
    cache = AnswerCache(Path(sys.argv[1]), fresh_ttl_s=60, stale_ttl_s=3600, size_limit_bytes=1 << 20,
                        on_error=errors.append)
    key = CacheKey("new question", "v1", {})
    await cache.put(key, CacheEntry("a", [], "full", "v1"))
    hit = await cache.get(key)
    print(json.dumps({"healthy": cache.healthy, "errors": cache.errors, "hit": hit is not None,
                      "reported": [type(e).__name__ for e in errors]}))
asyncio.run(main())
"""


async def test_read_only_directory_makes_put_a_no_op(tmp_path: Path) -> None:
    d = tmp_path / "c"
    cache = make_cache(d)
    await cache.put(KEY, ENTRY)
    cache.close()
    files = sorted(p.name for p in d.iterdir())
    for f in d.iterdir():
        os.chmod(f, 0o444)
    os.chmod(d, 0o500)
    try:
        res = subprocess.run([sys.executable, "-c", READ_ONLY_PROBE, str(d)], capture_output=True, text=True,
                             timeout=30, cwd=Path(__file__).resolve().parents[2])
    finally:
        os.chmod(d, 0o700)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == {"healthy": False, "errors": out["errors"], "hit": False, "reported": out["reported"]}
    assert out["errors"] >= 1 and out["reported"]
    assert sorted(p.name for p in d.iterdir()) == files  # nothing was written
