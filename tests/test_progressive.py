"""Progressive ingest: a version answers from fast vectors at once, upgrades to quality vectors in the background
(resumably), swaps without a failed request, and says which vectors answered (gateway.progressive)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway import progressive
from gateway.ingest import ingest, open_kb
from gateway.kb import FAST_VECTORS, KBCorrupt
from gateway.upstreams.faultinject import FaultSpec
from tests.conftest import TINY_CORPUS, anthropic_overrides, make_settings, state_of

ADMIN = {"Authorization": "Bearer adm-token-1234"}
QUESTION = {"query": "how long should green tea steep"}


def _settings(data: Path, **overrides: Any) -> Any:
    return make_settings(data, **{"kb.progressive_min_chunks": 1, "kb.auto_ingest_sample": False,
                                  "chaos.allow_fault_injection": True, "auth.admin_token": "adm-token-1234",
                                  **overrides})


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed upgrade is retried after 5 s in production; here after 0.1 s (the backoff is not under test)."""
    monkeypatch.setattr(progressive, "RETRY_S", (0.1, 0.2))
    monkeypatch.setattr(progressive, "POLL_S", 0.1)


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _embedder_down(client: Any) -> None:
    """The quality model fails every call (the fault sits inside the gateway's own embedder client)."""
    state_of(client).faults.set("embedder", FaultSpec.model_validate({"abort": {"http_status": 503}}))


async def _health_kb(client: Any) -> dict[str, Any]:
    return (await (await client.get("/health")).json())["components"]["kb"]


async def test_a_new_version_answers_from_fast_vectors_before_its_quality_vectors_exist(tmp_path, gateway_factory):
    settings = _settings(tmp_path / "data")
    result = await ingest(settings, [TINY_CORPUS])
    vdir = open_kb(settings).versions_dir / result.version
    assert result.vectors == "fast" and (vdir / FAST_VECTORS).exists() and not (vdir / "vectors.npy").exists()

    client = await gateway_factory(settings, wait_ready=False)
    _embedder_down(client)  # before the background upgrade can start: the quality model never answers
    await asyncio.wait_for(state_of(client).ready.wait(), timeout=60)
    resp = await client.post("/v1/query", json=QUESTION)
    body = await resp.json()
    # hybrid over the fast vectors: a normal answer (nothing failed), labelled with the vectors that answered
    assert resp.status == 200 and body["mode"] == "extractive" and body["degraded"] is False, body
    assert body["vectors"] == "fast" and resp.headers["X-RAG-Vectors"] == "fast"
    assert body["sources"][0]["source"] == "tea.md" and body["sources"][0]["retriever"] == "hybrid"
    assert not (vdir / "vectors.npy").exists()  # still no quality vectors on disk
    kb = await _health_kb(client)
    assert (kb["vectors"], kb["serving_vectors"]) == ("fast", "fast")
    await _until(lambda: _upgrade_state(client, "failed"), 30, "the failing upgrade is not labelled")
    health = await (await client.get("/health")).json()
    assert "kb_upgrade:error" in health["degraded_components"]
    assert "503" in health["components"]["kb"]["upgrade"]["error"]

    state_of(client).faults.clear()  # the quality model is back: the retried upgrade completes and swaps in
    await _until(lambda: _vectors_are(client, "quality"), 60, "the upgrade did not complete")
    body = await (await client.post("/v1/query", json=QUESTION)).json()
    assert body["vectors"] == "quality" and body["degraded"] is False
    assert (vdir / "vectors.npy").exists() and not (vdir / FAST_VECTORS).exists()
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["vectors"] == "quality" and "vectors.npy" in manifest["files"]


async def _upgrade_state(client: Any, want: str) -> bool:
    return ((await _health_kb(client)).get("upgrade") or {}).get("state") == want


async def _vectors_are(client: Any, want: str) -> bool:
    return (await _health_kb(client)).get("vectors") == want


async def test_the_swap_to_quality_vectors_fails_no_request(tmp_path, gateway_factory):
    settings = _settings(tmp_path / "data")
    await ingest(settings, [TINY_CORPUS])
    client = await gateway_factory(settings, wait_ready=False)
    _embedder_down(client)  # hold the upgrade until the probes run
    state = state_of(client)
    await asyncio.wait_for(state.ready.wait(), timeout=60)
    # Every search waits 0.3 s inside the store's client: queries that chose the fast set (and skipped the
    # quality embed) are still in flight when the quality set is swapped in.
    state.faults.set("vector_db", FaultSpec.model_validate({"delay": {"fixed_delay_s": 0.3}}))
    answers: list[tuple[int, dict[str, Any]]] = []
    swapped = asyncio.Event()

    async def probe() -> None:
        extra = 6  # keep asking after the swap, so queries straddle it
        while extra:
            resp = await client.post("/v1/query", json=QUESTION)
            answers.append((resp.status, await resp.json()))
            if swapped.is_set():
                extra -= 1

    probes = [asyncio.create_task(probe()) for _ in range(6)]
    await asyncio.sleep(0.5)
    state.faults.clear("embedder")
    await _until(lambda: _vectors_are(client, "quality"), 60, "the upgrade did not complete")
    swapped.set()
    await asyncio.wait_for(asyncio.gather(*probes), timeout=60)
    failed = [b for status, b in answers if status != 200 or b["degraded"]]
    assert not failed, failed[:3]
    seen = [b["vectors"] for _, b in answers]
    assert seen[0] == "fast" and seen[-1] == "quality" and len(answers) >= 12


async def test_answers_cached_from_fast_vectors_miss_after_the_swap_and_stand_in_only_when_the_llm_is_down(
        tmp_path, gateway_factory, fake_anthropic):
    settings = _settings(tmp_path / "data", **anthropic_overrides(fake_anthropic, **{"llm.fallback_model": None}))
    await ingest(settings, [TINY_CORPUS])
    client = await gateway_factory(settings, wait_ready=False)
    _embedder_down(client)  # hold the upgrade: both questions are answered and cached from the fast vectors
    await asyncio.wait_for(state_of(client).ready.wait(), timeout=60)
    other = {"query": "what temperature should water be for green tea"}
    for question in (QUESTION, other):
        body = await (await client.post("/v1/query", json=question)).json()
        assert (body["mode"], body["vectors"]) == ("full", "fast"), body
    resp = await client.post("/v1/query", json=QUESTION)
    body = await resp.json()
    assert (body["mode"], body["vectors"], resp.headers["X-RAG-Vectors"]) == ("cached", "fast", "fast")

    state_of(client).faults.clear()
    await _until(lambda: _vectors_are(client, "quality"), 60, "the upgrade did not complete")
    calls = fake_anthropic.requests_total
    resp = await client.post("/v1/query", json=QUESTION)
    body = await resp.json()
    # a fresh answer from the quality vectors, not the fast-vector one cached a moment ago (fresh TTL: 300 s)
    assert (body["mode"], body["degraded"], body["vectors"]) == ("full", False, "quality"), body
    assert resp.headers["X-RAG-Vectors"] == "quality" and fake_anthropic.requests_total == calls + 1
    body = await (await client.post("/v1/query", json=QUESTION)).json()
    assert (body["mode"], body["vectors"]) == ("cached", "quality")  # and that one is cached in its turn

    fake_anthropic.set_faults(status=529)  # stale-if-error still has the fast-vector answer, labelled so
    resp = await client.post("/v1/query", json=other)
    body = await resp.json()
    assert (body["mode"], body["degraded"], body["vectors"]) == ("cached", True, "fast"), body
    assert resp.headers["X-RAG-Vectors"] == "fast"
    assert body["degradations"][-1] == {"component": "answer_cache", "reason": "stale_answer",
                                        "age_s": body["degradations"][-1]["age_s"], "vectors": "fast"}
    stream = await (await client.post("/v1/query", json={**other, "stream": True})).text()
    done = json.loads(stream.strip().split("\n\n")[-1].split("data: ", 1)[1])  # the streamed answer's end
    assert (done["mode"], done["vectors"], done["answer"]) == ("cached", "fast", body["answer"]), done


_WATCH: tuple[int, str, list[str]] | None = None  # (event loop's thread, directory, files it opened there)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watch = _WATCH
    if (watch is not None and event == "open" and threading.get_ident() == watch[0]
            and str(args[0]).startswith(watch[1])):
        watch[2].append(str(args[0]))


@contextmanager
def _files_opened_on_the_loop(directory: Path) -> Iterator[list[str]]:
    """The files under ``directory`` this thread (the event loop's) opens meanwhile: Python's ``open`` audit
    event sees every open, os.open included (a hook cannot be removed: it records only inside this block)."""
    global _WATCH
    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)
        _audit.installed = True  # type: ignore[attr-defined]
    opened: list[str] = []
    _WATCH = (threading.get_ident(), str(directory), opened)
    try:
        yield opened
    finally:
        _WATCH = None


async def test_an_upgrade_reads_no_file_on_the_event_loop_and_reuses_the_served_chunks_only_when_the_manifests(
        tmp_path):
    from gateway.upstreams.factory import build_embedder

    settings = _settings(tmp_path / "data")
    version = (await ingest(settings, [TINY_CORPUS])).version
    kb = open_kb(settings)
    vdir = kb.versions_dir / version
    served = await asyncio.to_thread(kb.load, version)
    embedder = build_embedder(settings)
    assert served is not None and embedder is not None
    manifest_file = vdir / "manifest.json"
    original = manifest_file.read_text()
    try:
        # The manifest records other chunks than the served ones: chunks.jsonl is read and checked, not reused.
        other = json.loads(original)
        other["files"]["chunks.jsonl"]["sha256"] = "0" * 64
        manifest_file.write_text(json.dumps(other))
        with pytest.raises(KBCorrupt, match="chunks.jsonl does not match"):
            await progressive.upgrade_version(kb, version, embedder, loaded=served)
        manifest_file.write_text(original)

        # Another process upgrades (holds the lock): the waiter polls the manifest and the journal off the loop.
        lock = progressive._try_lock(vdir)
        polls: list[int] = []
        polled = asyncio.Event()

        def progress(stage: str, done: int, total: int) -> None:
            polls.append(done)
            if len(polls) >= 2:
                polled.set()

        with _files_opened_on_the_loop(kb.root) as opened:
            waiter = asyncio.create_task(progressive.wait_or_upgrade(kb, version, embedder, progress=progress,
                                                                     poll_s=0.01))
            await asyncio.wait_for(polled.wait(), timeout=30)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        os.close(lock)
        assert opened == []

        # The manifest's own chunks: the served copy (checked at load) is embedded, chunks.jsonl not read again.
        (vdir / "chunks.jsonl").rename(tmp_path / "chunks.away")
        with _files_opened_on_the_loop(kb.root) as opened:
            upgraded = await progressive.upgrade_version(kb, version, embedder, loaded=served)
        assert opened == [] and upgraded["vectors"] == "quality"
        (tmp_path / "chunks.away").rename(vdir / "chunks.jsonl")
        kb.verify(version)  # one quality vector per chunk of the version's own file
    finally:
        served.chunks.close()
        await embedder.close()


def _stdlib_subset(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("bisect.md", "heapq.md", "queue.md", "secrets.md", "textwrap.md", "csv.md"):
        shutil.copy(Path(__file__).parent.parent / "corpus" / "python-stdlib" / name, corpus / name)
    return corpus


def _cli(data: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data), "RAG_SIDECAR__LOGGING__LEVEL": "WARNING",
            "RAG_SIDECAR__KB__PROGRESSIVE_MIN_CHUNKS": "1", **env}
    full.pop("RAG_SIDECAR_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kb_list(data: Path) -> str:
    out, err = _cli(data, "kb", "list").communicate(timeout=60)
    assert "Traceback" not in err, err
    return out


async def test_a_killed_upgrade_resumes_from_its_journal_and_the_labels_follow(tmp_path, gateway_factory):
    data = tmp_path / "data"
    settings = _settings(data, **{"embedder.batch_size": 1})
    result = await ingest(settings, [_stdlib_subset(tmp_path)])
    kb, total = open_kb(settings), result.chunks
    assert total >= 20 and "vectors: fast" in _kb_list(data)

    # A real process upgrading the version, killed with SIGKILL once some quality vectors are journaled.
    upgrader = _cli(data, "kb", "upgrade", result.version, RAG_SIDECAR__EMBEDDER__BATCH_SIZE="1")
    manifest = json.loads((kb.versions_dir / result.version / "manifest.json").read_text())
    try:
        for _ in range(12_000):  # bounded: 60 s
            if progressive.quality_done(kb, result.version, manifest) >= 3 or upgrader.poll() is not None:
                break
            await asyncio.sleep(0.005)
        upgrader.send_signal(signal.SIGKILL)
    finally:
        _, err = upgrader.communicate(timeout=30)
    assert upgrader.returncode == -signal.SIGKILL, err
    done = progressive.quality_done(kb, result.version, manifest)
    assert 0 < done < total, (done, total)
    assert f"vectors: quality {done}/{total}" in _kb_list(data)

    # A gateway serves the fast set and shows the partial upgrade; its quality model is down at first.
    client = await gateway_factory(settings, wait_ready=False)
    _embedder_down(client)
    state = state_of(client)
    await asyncio.wait_for(state.ready.wait(), timeout=60)
    health = await _health_kb(client)
    assert (health["vectors"], health["serving_vectors"]) == (f"quality {done}/{total}", "fast")
    assert (await (await client.post("/v1/query", json={"query": "a heap queue"})).json())["vectors"] == "fast"

    state.faults.clear()
    await _until(lambda: _vectors_are(client, "quality"), 120, "the resumed upgrade did not complete")
    assert state.upgrade.done_at_start == done  # resumed where the killed process stopped, nothing redone
    assert state.upgrade.done == total and re.search(r"vectors: quality(?! \d)", _kb_list(data))
    assert not (kb.root / "embed-journal").exists() or not any((kb.root / "embed-journal").iterdir())


async def test_a_crash_while_writing_quality_vectors_leaves_the_fast_version_usable(tmp_path):
    settings = _settings(tmp_path / "data")
    result = await ingest(settings, [TINY_CORPUS])
    kb = open_kb(settings)
    vdir = kb.versions_dir / result.version
    # what a kill between writing vectors.npy and replacing the manifest leaves behind, plus a torn temp file
    (vdir / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
    (vdir / ".vectors.npy.dead.tmp").write_bytes(b"torn")
    kb.verify(result.version)
    loaded = kb.load(result.version)
    assert loaded is not None and loaded.vectors_tier == "fast" and loaded.vectors is None
    loaded.chunks.close()

    from gateway.upstreams.factory import build_embedder

    embedder = build_embedder(settings)
    assert embedder is not None
    try:
        await progressive.upgrade_version(kb, result.version, embedder)
    finally:
        await embedder.close()
    kb.verify(result.version)
    upgraded = kb.load(result.version)
    assert upgraded is not None and upgraded.vectors_tier == "quality" and upgraded.vectors.shape[0] == result.chunks
    upgraded.chunks.close()
    assert not (vdir / ".vectors.npy.dead.tmp").exists()


async def test_every_process_serving_the_version_swaps_and_only_one_upgrades(tmp_path, gateway_factory, caplog):
    settings = _settings(tmp_path / "data")
    result = await ingest(settings, [TINY_CORPUS])
    first = await gateway_factory(settings, wait_ready=False)
    _embedder_down(first)  # at once: no upgrade before both serve the fast set
    second = await gateway_factory(settings, wait_ready=False)  # two workers over one data dir
    _embedder_down(second)
    for client in (first, second):
        await asyncio.wait_for(state_of(client).ready.wait(), timeout=60)
    with caplog.at_level("INFO", logger="rag_sidecar.kb"):
        for client in (first, second):
            state_of(client).faults.clear()
        for client in (first, second):
            await _until(lambda c=client: _vectors_are(c, "quality"), 60, "a worker did not swap")
    assert len([r for r in caplog.records if getattr(r, "event", None) == "kb_upgraded"]) == 1
    for client in (first, second):
        body = await (await client.post("/v1/query", json=QUESTION)).json()
        assert body["vectors"] == "quality" and body["kb_version"] == result.version


async def test_a_version_whose_vectors_another_model_made_is_refused_on_either_set(data_dir, gateway_factory):
    settings = _settings(data_dir)
    client = await gateway_factory(settings)
    before = state_of(client).kb.version
    kb = open_kb(settings)
    fast = (await ingest(settings, [TINY_CORPUS], activate=False, label="fast")).version
    for key, bad in (("embedder", "local:another-quality-model"), ("fast_embedder", "local:another-fast-model")):
        name = f"{fast}-{key}"
        shutil.copytree(kb.versions_dir / fast, kb.versions_dir / name)
        path = kb.versions_dir / name / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest[key]["name"] = bad
        path.write_text(json.dumps(manifest))
        resp = await client.post("/admin/kb/activate", json={"version": name}, headers=ADMIN)
        assert resp.status == 409 and bad in (await resp.json())["error"]["message"], key
        assert kb.active_version() == before and state_of(client).kb.version == before
    resp = await client.post("/admin/kb/activate", json={"version": fast}, headers=ADMIN)
    assert resp.status == 200  # the untouched copy is served (fast set first)
    assert state_of(client).kb.version == fast


def test_ingest_wait_quality_returns_once_the_quality_vectors_are_written(tmp_path, capsys):
    from gateway.cli import main

    data = tmp_path / "data"
    env = {"RAG_SIDECAR__SERVER__DATA_DIR": str(data), "RAG_SIDECAR__KB__PROGRESSIVE_MIN_CHUNKS": "1",
           "RAG_SIDECAR__LOGGING__LEVEL": "WARNING"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["ingest", str(TINY_CORPUS), "--wait-quality"]) == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["vectors"] == "quality" and out["quality_seconds"] is not None
    assert (data / "kb" / "versions" / out["version"] / "vectors.npy").exists()


async def test_activating_another_version_stops_the_old_ones_upgrade(tmp_path, gateway_factory):
    settings = _settings(tmp_path / "data", **{"embedder.batch_size": 1, "kb.chunk_chars": 100, "kb.chunk_overlap": 0})
    old = (await ingest(settings, [TINY_CORPUS])).version
    new = (await ingest(settings, [TINY_CORPUS], activate=False, label="next")).version
    kb = open_kb(settings)
    client = await gateway_factory(settings, wait_ready=False)
    state = state_of(client)
    state.faults.set("embedder", FaultSpec.model_validate({"delay": {"fixed_delay_s": 0.2}}))  # slow batches
    await asyncio.wait_for(state.ready.wait(), timeout=60)
    await _until(lambda: _upgrade_state(client, "upgrading"), 30, "the upgrade did not start")
    resp = await client.post("/admin/kb/activate", json={"version": new}, headers=ADMIN)
    assert resp.status == 200
    state.faults.clear()
    await _until(lambda: _vectors_are(client, "quality"), 60, "the activated version was not upgraded")
    assert state.kb.version == new
    old_manifest = json.loads((kb.versions_dir / old / "manifest.json").read_text())
    assert old_manifest["vectors"] == "fast"  # its upgrade stopped when it stopped being served
    assert 0 < progressive.quality_done(kb, old, old_manifest) < old_manifest["chunk_count"]


async def test_pruning_a_fast_version_removes_its_upgrade_journal_and_its_rows_serve_the_next(tmp_path):
    import numpy as np

    from gateway.kb import embedder_id
    from gateway.upstreams.factory import build_embedder

    settings = _settings(tmp_path / "data", **{"kb.keep_versions": 1, "kb.chunk_chars": 200, "kb.chunk_overlap": 0})
    kb = open_kb(settings)
    first = (await ingest(settings, [TINY_CORPUS])).version
    embedder = build_embedder(settings)
    assert embedder is not None
    try:
        loaded = kb.load(first)
        assert loaded is not None
        ids = [c.id for c in loaded.chunks][:2]  # a partial upgrade: two quality rows journaled
        loaded.chunks.close()
        journal = kb.upgrade_journal(first, embedder_id(embedder), embedder.dim)
        journal.append(ids, np.ones((2, embedder.dim or 0), np.float32))
        second = (await ingest(settings, [TINY_CORPUS], label="again")).version  # prunes `first`
        assert kb.version_names() == [second] and not journal.dir.exists()
        manifest = json.loads((kb.versions_dir / second / "manifest.json").read_text())
        assert manifest["reused_vectors"] == 2 and progressive.quality_done(kb, second, manifest) == 2
    finally:
        await embedder.close()
