"""``rag-sidecar serve --workers N``: N gateway processes on one port, under one supervisor.

* **One port.** Every worker listens with ``SO_REUSEPORT``; the kernel spreads new connections over
  them by hash (a shared accept socket would let one worker's accept loop take most of a burst). Before
  starting them the supervisor binds the port *without* ``SO_REUSEPORT`` to prove nobody else listens
  there (``SO_REUSEPORT`` alone would silently share the port with another instance of the same user),
  then keeps a bound, non-listening ``SO_REUSEPORT`` socket on it so the port stays ours.
* **Breaker state** is shared through :class:`resilience.local_shared.BreakerHub`, a unix-socket relay
  in the supervisor (a breaker opened in one worker opens in the others in ~1 ms); with
  ``resilience.redis_url`` set, Redis already shares it across every process and replica.
* **The KB** is loaded by each worker from the same files: vectors and chunk texts are memory-mapped
  read-only, so their pages are the page cache's, shared by all workers. An activation (CLI or admin
  API) reaches every worker through the ``ACTIVE`` poll (≤ 2 s).
* **Metrics.** ``/metrics`` on any worker answers for all of them: it scrapes its siblings over their
  private unix sockets and labels every sample ``worker="i"`` (``sum without (worker)`` for the node).
  DogStatsD: each worker sends to the same agent with a ``worker:i`` tag (``DATADOG_TAGS``), so counts
  and distributions add up and gauges stay per worker.
* **Signals.** SIGTERM/SIGINT: SIGTERM to every worker, each drains its in-flight requests for
  ``server.shutdown_grace_s``; the supervisor waits for all (then SIGKILL after a further 5 s).
  SIGHUP: rolling reload — a new worker per slot, ready (``/readyz``) before the old one is drained.
  A worker that dies is restarted (at most 5 restarts a minute, then the supervisor gives up and exits 1).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("rag_sidecar.workers")
ENV_WORKER = "RAG_SIDECAR_WORKER"  # "i/N", set by the supervisor for its workers
ENV_RUN_DIR = "RAG_SIDECAR_RUN_DIR"
HUB_SOCKET = "breakers.sock"
KILL_AFTER_GRACE_S = 5.0
MAX_RESTARTS_PER_MIN = 5
READY_TIMEOUT_S = 600.0  # a reload waits this long for a new worker (a first start may ingest the corpus)
SCRAPE_TIMEOUT_S = 2.0


def parse_workers(value: str) -> int:
    """``auto`` → the CPUs this process may run on; else an integer ≥ 1 (argparse ``type``)."""
    import argparse

    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1 or 'auto', got {value!r}")
    return n


# ---- inside a worker ------------------------------------------------------------------------------
WORKER: web.AppKey["WorkerContext"] = web.AppKey("rag_sidecar_worker")


@dataclass(frozen=True)
class WorkerContext:
    """Who this worker is (index ``i`` of ``count``) and where the supervisor's sockets are."""

    index: int
    count: int
    run_dir: Path

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        raw, run_dir = os.environ.get(ENV_WORKER), os.environ.get(ENV_RUN_DIR)
        if not raw or not run_dir:
            return None
        i, n = raw.split("/")
        return cls(int(i), int(n), Path(run_dir))

    @property
    def socket_path(self) -> Path:
        """This worker's private unix socket (the same app: /metrics?local=1 and /readyz for the supervisor)."""
        return self.run_dir / f"worker-{self.index}-{os.getpid()}.sock"

    def site_options(self) -> dict[str, Any]:
        """Extra ``web.run_app`` arguments: the shared port with SO_REUSEPORT and the private socket."""
        return {"reuse_port": True, "path": str(self.socket_path)}

    def attach(self, app: web.Application) -> None:
        """Share breakers through the supervisor's hub (unless Redis does) and aggregate /metrics."""
        from gateway.state import STATE
        from resilience.local_shared import LocalSharedBreakerState

        state = app[STATE]
        state.worker = {"index": self.index, "count": self.count, "pid": os.getpid()}
        app[WORKER] = self
        guards = state.guards
        if guards.shared is None:
            shared = LocalSharedBreakerState(str(self.run_dir / HUB_SOCKET), instance_id=f"w{self.index}-{os.getpid()}")
            for guard in guards:
                shared.register(guard.breaker)
            guards.shared = shared
            state.llm_router.guards.attach_shared(shared)  # one guard per LLM model, made before this

    async def metrics_text(self, own: bytes) -> bytes:
        """Every worker's /metrics merged, each sample labelled ``worker``."""
        texts = {self.index: own}
        me = os.getpid()
        for path in sorted(self.run_dir.glob("worker-*.sock")):
            index, pid = (int(x) for x in path.stem.split("-")[1:3])
            if pid == me or index in texts:
                continue  # during a rolling reload two processes hold one slot: the first answers for it
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                texts[index] = await _get_unix(path, "/metrics?local=1")
        return merge_prometheus(texts)


async def _get_unix(path: Path, url_path: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> bytes:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)),
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        async with http.get(f"http://worker{url_path}") as resp:
            if resp.status != 200:
                raise ValueError(f"{url_path}: {resp.status}")
            return await resp.read()


def merge_prometheus(texts: dict[int, bytes]) -> bytes:
    """Prometheus text from several processes → one exposition with a ``worker`` label on every sample."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for index in sorted(texts):
        for fam in text_string_to_metric_families(texts[index].decode()):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            merged.samples.extend(Sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp,
                                         s.exemplar) for s in fam.samples)

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


# ---- the supervisor -------------------------------------------------------------------------------
def reserve_port(host: str, port: int) -> socket.socket:
    """Fail if something listens on ``host:port``; else hold it (bound, not listening, SO_REUSEPORT).
    Raises OSError (EADDRINUSE) when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        probe.bind((host, port))
        port = probe.getsockname()[1]
    keep = socket.socket(family, socket.SOCK_STREAM)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    keep.bind((host, port))
    return keep


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    started_at: float
    retiring: bool = False


class Supervisor:
    """Starts ``count`` workers (``python -m gateway.cli serve`` with the same config) and keeps them up."""

    def __init__(self, *, count: int, host: str, port: int, config: str | None, grace_s: float) -> None:
        self.count, self.host, self.port, self.config, self.grace_s = count, host, port, config, grace_s
        self.run_dir = Path(tempfile.mkdtemp(prefix="rag-sidecar-workers-"))  # 0700: the sockets are ours
        self.workers: dict[int, _Worker] = {}
        self.live: set[asyncio.subprocess.Process] = set()  # including retiring workers still draining
        self.restarts: list[float] = []
        self.stopping = False
        self.exit_code = 0
        self._stop = asyncio.Event()

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--host", self.host, "--port", str(self.port)]
        return cmd + (["--config", self.config] if self.config else [])

    def _env(self, index: int) -> dict[str, str]:
        tags = [t for t in os.environ.get("DATADOG_TAGS", "").split(",") if t and not t.startswith("worker:")]
        env = {**os.environ, ENV_WORKER: f"{index}/{self.count}", ENV_RUN_DIR: str(self.run_dir),
               "DATADOG_TAGS": ",".join([*tags, f"worker:{index}"])}
        if index > 0:  # one first-run ingest of the sample corpus, not N racing ones: the others poll ACTIVE
            env["RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE"] = "false"
        return env

    async def _spawn(self, index: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(*self._command(), env=self._env(index))
        self.live.add(proc)
        log.info("worker started", extra={"event": "worker_started", "worker": index, "pid": proc.pid})
        return _Worker(index, proc, time.monotonic())

    async def _ready(self, worker: _Worker, timeout_s: float = READY_TIMEOUT_S) -> bool:
        path = self.run_dir / f"worker-{worker.index}-{worker.proc.pid}.sock"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and worker.proc.returncode is None:
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                await _get_unix(path, "/readyz", 1.0)
                return True
            await asyncio.sleep(0.2)
        return False

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        self.live.discard(worker.proc)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / f"worker-{worker.index}-{worker.proc.pid}.sock").unlink()
        if self.stopping or worker.retiring or self.workers.get(worker.index) is not worker:
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        log.error("worker died", extra={"event": "worker_died", "worker": worker.index, "pid": worker.proc.pid,
                                        "returncode": code})
        if len(self.restarts) > MAX_RESTARTS_PER_MIN:
            log.error("workers keep dying; giving up", extra={"event": "workers_crash_loop"})
            self.exit_code = 1
            self._stop.set()
            return
        await asyncio.sleep(min(2.0, 0.1 * 2 ** len(self.restarts)))
        if not self.stopping:
            await self._start_slot(worker.index)

    async def _start_slot(self, index: int) -> _Worker:
        worker = await self._spawn(index)
        self.workers[index] = worker
        asyncio.create_task(self._watch(worker), name=f"watch-worker-{index}")
        return worker

    async def reload(self) -> None:
        """Rolling: per slot, a new worker must answer /readyz before the old one drains."""
        for index in range(self.count):
            old = self.workers.get(index)
            new = await self._spawn(index)
            asyncio.create_task(self._watch(new), name=f"watch-worker-{index}")
            if not await self._ready(new):
                log.error("reload: new worker not ready; keeping the old one",
                          extra={"event": "worker_reload_failed", "worker": index})
                new.retiring = True
                with contextlib.suppress(ProcessLookupError):
                    new.proc.kill()
                return
            self.workers[index] = new
            if old is not None:
                old.retiring = True
                with contextlib.suppress(ProcessLookupError):
                    old.proc.send_signal(signal.SIGTERM)
        log.info("workers reloaded", extra={"event": "workers_reloaded", "workers": self.count})

    async def shutdown(self) -> None:
        """SIGTERM every worker; wait for all to drain (grace + 5 s), then SIGKILL what is left."""
        self.stopping = True
        procs = list(self.live)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), self.grace_s + KILL_AFTER_GRACE_S)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker did not stop in time: killed", extra={"event": "worker_killed", "pid": proc.pid})
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))

    async def run(self) -> int:
        from resilience.local_shared import BreakerHub

        reserved = reserve_port(self.host, self.port)
        self.port = reserved.getsockname()[1]
        hub = BreakerHub(str(self.run_dir / HUB_SOCKET))
        await hub.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        reloads: set[asyncio.Task[None]] = set()
        loop.add_signal_handler(signal.SIGHUP, lambda: reloads.add(asyncio.create_task(self.reload())))
        try:
            print(f"rag-sidecar supervisor (pid {os.getpid()}): {self.count} workers on "
                  f"http://{self.host}:{self.port}", file=sys.stderr, flush=True)
            for index in range(self.count):
                await self._start_slot(index)
            await self._stop.wait()
            for task in reloads:
                task.cancel()
            await self.shutdown()
        finally:
            await hub.close()
            reserved.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.exit_code


def supervise(*, count: int, host: str, port: int, config: str | None, grace_s: float) -> int:
    """Run the supervisor until SIGTERM/SIGINT; the exit code (0, or 1 after a crash loop)."""
    try:
        return asyncio.run(Supervisor(count=count, host=host, port=port, config=config, grace_s=grace_s).run())
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
