"""server.gc_freeze: the loaded KB is kept out of the garbage collector's full passes, and a swapped-out KB's
cycles are still freed (gateway/heap.py)."""
from __future__ import annotations

import gc
import logging
import weakref
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway import heap
from tests.conftest import ingest_octopus_version, make_settings, state_of


@pytest.fixture
def freezing() -> Iterator[None]:
    """The policy on, as in `rag-sidecar serve`; the test process's collector is restored afterwards."""
    heap.enable(True)
    try:
        yield
    finally:
        heap.enable(False)
        gc.unfreeze()


def _collectable(obj: Any) -> bool:
    """Whether a collection walks ``obj`` (it is in generation 0, 1 or 2, not the permanent one)."""
    return any(o is obj for o in gc.get_objects())


class _Node:
    pass


def test_settle_freezes_survivors_and_frees_cycles_it_froze_before(freezing: None) -> None:
    kept = _Node()
    cycle = _Node()
    cycle.self = cycle  # type: ignore[attr-defined]  # only the cyclic collector frees it
    gone = weakref.ref(cycle)
    first = heap.settle("test")
    assert first is not None and first["objects"] > 0 and first["pause_ms"] >= 0
    assert not _collectable(kept)  # frozen: full collections skip it
    del cycle
    gc.collect()
    assert gone() is not None  # frozen cycles wait ...
    second = heap.settle("test")
    assert gone() is None  # ... until the next settle hands them back first (no leak per KB swap)
    assert second is not None and second["collected"] >= 1
    assert not _collectable(kept)


def test_settle_does_nothing_unless_enabled() -> None:
    assert not heap.enabled()
    obj = _Node()
    before = gc.get_freeze_count()
    assert heap.settle("test") is None
    assert gc.get_freeze_count() == before and _collectable(obj)


async def test_a_served_kb_is_frozen_at_start_up_and_after_a_swap(
        freezing: None, gateway_factory: Any, data_dir: Path, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="rag_sidecar.app")
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "t0ken-admin"}))
    state = state_of(client)
    assert not _collectable(state.kb)
    new = await ingest_octopus_version(data_dir, tmp_path)
    old = weakref.ref(state.kb)
    resp = await client.post("/admin/kb/activate", json={"version": new},
                             headers={"Authorization": "Bearer t0ken-admin"})
    assert resp.status == 200
    assert state.kb.version == new and not _collectable(state.kb)
    reasons = [r.reason for r in caplog.records if getattr(r, "event", None) == "heap_frozen"]
    assert reasons == ["kb_loaded", "kb_swap"]
    del resp
    gc.collect()
    assert old() is None  # the previous version is not kept frozen


async def test_rag_sidecar_serve_freezes_its_heap_once_settled(data_dir: Path, tmp_path: Path) -> None:
    from tests.serve_proc import ServeProcess

    gw = await ServeProcess(data_dir, tmp_path / "serve.log", RAG_SIDECAR__LOGGING__LEVEL="INFO").start()
    try:
        frozen = [r for r in gw.logs() if r.get("event") == "heap_frozen"]
    finally:
        gw.stop()
    assert [r["reason"] for r in frozen] == ["kb_loaded"]
    assert frozen[0]["objects"] > 10_000 and frozen[0]["pause_ms"] > 0
    assert frozen[0]["gen0_threshold"] == 7000  # server.gc_gen0_threshold's default is in force
