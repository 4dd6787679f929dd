"""KB versions under operator mistakes and crashes: corrupt versions are refused, a concurrent ingest is
not deleted, nothing half-written becomes active."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from gateway.kb import BUILDER_FILE, KBCorrupt, KnowledgeBase
from tests.conftest import make_settings, state_of


def _corrupt_copy(kb: KnowledgeBase) -> str:
    src = kb.versions_dir / kb.active_version()
    dst = kb.versions_dir / "vbroken"
    shutil.copytree(src, dst)
    lines = (dst / "chunks.jsonl").read_text().splitlines(keepends=True)
    (dst / "chunks.jsonl").write_text("".join(lines[:-1]))  # one chunk short of its vectors
    return "vbroken"


def test_activating_a_corrupt_version_is_refused_and_active_is_unchanged(data_dir):
    kb = KnowledgeBase(data_dir / "kb")
    before = kb.active_version()
    with pytest.raises(KBCorrupt, match="corrupt"):
        kb.activate(_corrupt_copy(kb))
    assert kb.active_version() == before


async def test_admin_activate_of_a_corrupt_version_is_409_and_keeps_serving(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "adm-token-1234"}))
    kb = state_of(client).kb_store
    before = kb.active_version()
    resp = await client.post("/admin/kb/activate", json={"version": _corrupt_copy(kb)},
                             headers={"Authorization": "Bearer adm-token-1234"})
    assert resp.status == 409 and (await resp.json())["error"]["field"] == "version"
    assert kb.active_version() == before and state_of(client).kb.version == before
    assert (await client.post("/v1/query", json={"query": "tea"})).status == 200


def test_a_build_in_progress_elsewhere_is_not_cleaned_up(data_dir):
    kb = KnowledgeBase(data_dir / "kb")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = data_dir / "kb" / ".tmp-v-alive"
        alive.mkdir()
        (alive / BUILDER_FILE).write_text(str(sleeper.pid))
        crashed = data_dir / "kb" / ".tmp-v-crashed"
        crashed.mkdir()
        (crashed / BUILDER_FILE).write_text(str(sleeper.pid))
        sleeper_pid_dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                          capture_output=True, text=True).stdout.strip()
        (crashed / BUILDER_FILE).write_text(sleeper_pid_dead)  # that process has exited
        old_style = data_dir / "kb" / ".tmp-v-nopid"
        old_style.mkdir()
        removed = kb.clean_leftovers()
        assert alive.exists() and not crashed.exists() and not old_style.exists()
        assert sorted(removed) == [".tmp-v-crashed", ".tmp-v-nopid"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_builder_file_is_gone_from_a_finished_version(data_dir):
    kb = KnowledgeBase(data_dir / "kb")
    assert not (kb.versions_dir / kb.active_version() / BUILDER_FILE).exists()
    assert os.listdir(data_dir / "kb")  # sanity: the fixture built one


class _Hashing:
    """A deterministic stand-in model (vectors from the text's hash) that can be told to die mid-ingest."""

    name = "local"
    model_id = "test:hashing"
    dim = 8

    def __init__(self, die_after: int | None = None) -> None:
        self.embedded: list[str] = []
        self.die_after = die_after

    async def embed_passages(self, texts):
        import numpy as np

        if self.die_after is not None and len(self.embedded) >= self.die_after:
            raise KeyboardInterrupt("killed mid-ingest")
        self.embedded.extend(texts)
        return np.stack([np.frombuffer(__import__("hashlib").sha256(t.encode()).digest()[:32], dtype=np.float32)
                         for t in texts])


async def test_a_killed_ingest_resumes_from_its_journaled_vectors(tmp_path):
    import numpy as np

    from tests.conftest import TINY_CORPUS

    kb = KnowledgeBase(tmp_path / "kb")
    dying = _Hashing(die_after=4)
    with pytest.raises(KeyboardInterrupt):
        await kb.ingest([TINY_CORPUS], embedder=dying, chunk_chars=200, overlap=0, batch_size=2)
    assert kb.active_version() is None and len(dying.embedded) == 4

    resumed = _Hashing()
    version = await kb.ingest([TINY_CORPUS], embedder=resumed, chunk_chars=200, overlap=0, batch_size=2)
    total = len(kb.load(version).chunks)
    assert len(resumed.embedded) == total - 4  # only what the killed run had not embedded
    assert not set(resumed.embedded) & set(dying.embedded)
    fresh = _Hashing()
    other = await KnowledgeBase(tmp_path / "kb2").ingest([TINY_CORPUS], embedder=fresh, chunk_chars=200,
                                                         overlap=0, batch_size=2)
    assert np.array_equal(np.load(kb.versions_dir / version / "vectors.npy"),
                          np.load(tmp_path / "kb2" / "versions" / other / "vectors.npy"))
    assert not (tmp_path / "kb" / "embed-journal").exists()  # cleared once the version holds the vectors


def test_a_journal_counts_from_its_file_sizes_the_rows_it_would_load_even_torn(tmp_path):
    import numpy as np

    from fallback.chunking import stable_id

    kb = KnowledgeBase(tmp_path / "kb")
    journal = kb.upgrade_journal("v1", "local:model", 4)
    assert journal.count() == 0 and journal.load() == {}
    ids = [stable_id("doc", i) for i in range(5)]
    journal.append(ids[:3], np.ones((3, 4), np.float32))

    def torn(vector_rows: float, id_text: str) -> None:  # what a kill between or inside the two writes leaves
        with open(journal.dir / "vectors.f32", "ab") as fh:
            fh.write(np.ones(int(vector_rows * 4), np.float32).tobytes())
        with open(journal.dir / "ids.txt", "a") as fh:
            fh.write(id_text)

    torn(0, f"{ids[3]}\n")  # an id whose row is missing
    assert journal.count() == len(journal.load()) == 3
    torn(2.5, ids[4][:15])  # rows ahead, the last id cut short
    assert journal.count() == len(journal.load()) == 4
    # one owner for where a version's upgrade journal lives: another version or model is another journal
    assert kb.upgrade_journal("v1", "local:model", 4).load().keys() == set(ids[:4])
    assert kb.upgrade_journal("v2", "local:model", 4).count() == 0
    assert kb.upgrade_journal("v1", "local:other", 4).count() == 0


def test_a_kb_load_leaves_garbage_collectable(data_dir):
    """Loading pauses the cyclic GC and must not freeze what exists: with ``gc.freeze`` after each load, a
    reference cycle through every stopped gateway's embedder (a ~120 MB ONNX model each) stayed forever;
    tests/test_gateway.py alone peaked at 7.9 GB instead of 1.3 GB and full runs were OOM-killed at 24 GB."""
    import gc
    import weakref

    class Held:
        pass

    enabled = gc.isenabled()
    gc.disable()  # no automatic pass may collect the cycle before the load: only the explicit one below
    try:
        cycle = Held()
        cycle.me = cycle  # type: ignore[attr-defined]
        alive = weakref.ref(cycle)
        del cycle
        assert KnowledgeBase(data_dir / "kb").load() is not None
        gc.collect()
        assert alive() is None, "a reference cycle alive during a KB load was never collected"
    finally:
        if enabled:
            gc.enable()
