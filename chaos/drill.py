"""The drill runner: steady state before, the method under load, checks during and after, rollbacks always.

:class:`Drill` runs one :class:`~chaos.scenario.Scenario` against a gateway URL:

1. pre-flight — the gateway answers ``/readyz``; the fault proxy, stand-ins and admin API the
   scenario needs are reachable (else ``failed``, nothing applied);
2. ``before`` — baseline load for ``before_s``; the ``before`` probes must hold or the method is
   skipped (``failed``, as Chaos Toolkit does);
3. method — the actions at their ``at_s`` (each fault undone after its ``duration_s``) while the load
   goes on; ``during`` = the fault windows;
4. ``after`` — load for ``after_s`` more;
5. always (``finally``, also on cancellation / Ctrl-C → ``aborted``): undo every fault still applied,
   then the scenario's ``rollbacks``; then the journal, the report and the PNG are written.

The load is open-loop (:class:`LoadGenerator`): arrivals at ``rate_per_s`` whatever the latency, at
most ``concurrency`` in flight (an arrival finding no free slot is counted as ``skipped``, never
queued), at most ``max_requests``, stopped with the drill; every request carries its deadline in
``X-Request-Timeout`` and is abandoned — counted *hung* — at deadline + ``slack_s``.
Breaker states come from ``GET /admin/breakers`` (with an admin token) and upstream attempts from the
stand-ins' ``/__stats__`` (or the gateway's guard stats), polled every ``sample_interval_s`` and
snapshotted at every phase and fault-window boundary.

``journal.json`` follows Chaos Toolkit's journal where it can (``status``, ``deviated``,
``steady_states.{before,during,after}.steady_state_met``, ``run``, ``rollbacks``) and adds the
per-request statistics and per-second ``samples`` the report and the timeline PNG are drawn from.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import aiohttp

from chaos.proxy.client import ToxiproxyClient, ToxiproxyError, ToxiproxyNotFound
from chaos.scenario import FAULT_ACTIONS, MODES, Action, Probe, Rollback, Scenario

log = logging.getLogger("chaos.drill")

JOURNAL_FORMAT = "rag-sidecar-drill/1"
# Which proxy (Toxiproxy name) and which guards front each dependency, by default (the local stack's names).
DEFAULT_PROXIES = {"vector_db": "weaviate_grpc", "embedder": "embeddings", "llm": "anthropic"}
GUARDS = {"embedder": ("embedder",), "vector_db": ("vector_db",), "llm": ("llm", "llm_fallback"),
          "llm_fallback": ("llm_fallback",)}
# --stub NAME=URL accepts a dependency or a stand-in's name.
STUB_ALIASES = {"weaviate": "vector_db", "anthropic": "llm", "embeddings": "embedder",
                "vector_db": "vector_db", "llm": "llm", "embedder": "embedder"}
CONTROL_TIMEOUT_S = 5.0  # every control-plane call (toxics, stand-in faults, admin) is bounded by this


class DrillError(Exception):
    """The drill could not run or apply an action (pre-flight, or an action the target refused)."""


@dataclass
class DrillTarget:
    """Where the drill's requests and faults go.

    ``url``: the gateway; ``toxiproxy``: the fault proxy's API (ours or a real Toxiproxy);
    ``stubs``: dependency → stand-in base URL (``/__faults__``, ``/__stats__``); ``admin_token``:
    the gateway's admin token (breaker states, breaker actions, ``/admin/faults``); ``proxies``:
    dependency → proxy name for toxic actions.
    """

    url: str
    toxiproxy: str | None = None
    stubs: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    proxies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROXIES))

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "toxiproxy": self.toxiproxy, "stubs": dict(self.stubs),
                "admin": self.admin_token is not None, "proxies": dict(self.proxies)}


# ---- the control plane ---------------------------------------------------------------------------
Undo = Callable[[], Awaitable[None]]


class Controls:
    """Applies actions to the fault proxy, the stand-ins and the gateway admin API; reads their counters."""

    def __init__(self, target: DrillTarget, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        self.toxiproxy = ToxiproxyClient(target.toxiproxy, timeout_s=CONTROL_TIMEOUT_S) if target.toxiproxy else None
        self._timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)

    async def close(self) -> None:
        if self.toxiproxy is not None:
            await self.toxiproxy.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _proxy(self, target: str) -> str:
        if self.toxiproxy is None:
            raise DrillError("this action needs the fault proxy: pass --toxiproxy URL")
        return self.target.proxies.get(target, target)

    def _stub(self, target: str) -> str:
        dep = STUB_ALIASES.get(target, target)
        url = self.target.stubs.get(dep)
        if url is None:
            raise DrillError(f"no stand-in URL for {target!r}: pass --stub {dep}=URL")
        return url.rstrip("/")

    def _admin_headers(self) -> dict[str, str]:
        if not self.target.admin_token:
            raise DrillError("this action needs the gateway's admin token: pass --admin-token")
        return {"Authorization": f"Bearer {self.target.admin_token}"}

    async def _http(self, method: str, url: str, *, json_body: Any = None,
                    headers: dict[str, str] | None = None, ok_404: bool = False) -> Any:
        async with self.session.request(method, url, json=json_body, headers=headers, timeout=self._timeout) as resp:
            text = await resp.text()
            if resp.status == 404 and ok_404:
                return None
            if resp.status >= 400:
                raise DrillError(f"{method} {url} -> {resp.status}: {text[:300]}")
            return json.loads(text) if text.strip() else None

    # -- actions -------------------------------------------------------------------------------
    async def apply(self, action: Action | Rollback, index: int = 0) -> Undo | None:
        """Apply one action; returns how to undo it (None for actions that undo nothing)."""
        kind, target, attrs = action.action, action.target, dict(action.attributes)
        if kind == "toxic_add":
            proxy = self._proxy(target)
            stream = attrs.get("stream", "downstream")
            name = attrs.get("name") or f"drill{index}_{attrs['type']}_{stream}"
            await self.toxiproxy.add_toxic(proxy, attrs["type"], attributes=attrs.get("attributes") or {},
                                           stream=stream, toxicity=float(attrs.get("toxicity", 1.0)), name=name)
            return lambda: self._remove_toxic(proxy, name)
        if kind == "toxic_update":
            await self.toxiproxy.update_toxic(self._proxy(target), attrs["name"], attributes=attrs.get("attributes"),
                                              toxicity=attrs.get("toxicity"))
            return None
        if kind == "toxic_remove":
            await self._remove_toxic(self._proxy(target), attrs["name"])
            return None
        if kind == "proxy_disable":
            proxy = self._proxy(target)
            await self.toxiproxy.disable(proxy)
            return lambda: self._enable(proxy)
        if kind == "proxy_enable":
            await self._enable(self._proxy(target))
            return None
        if kind == "stub_fault":
            url = self._stub(target) + "/__faults__"
            previous = await self._http("GET", url)
            await self._http("PATCH", url, json_body=attrs)
            return lambda: self._http("PUT", url, json_body=previous)
        if kind == "stub_clear":
            await self._http("DELETE", self._stub(target) + "/__faults__")
            return None
        if kind == "gateway_fault":
            url = f"{self.target.url.rstrip('/')}/admin/faults/{target}"
            await self._http("PUT", url, json_body=attrs, headers=self._admin_headers())
            return lambda: self._http("DELETE", url, headers=self._admin_headers())
        if kind == "gateway_fault_clear":
            suffix = "" if target == "all" else f"/{target}"
            await self._http("DELETE", f"{self.target.url.rstrip('/')}/admin/faults{suffix}",
                             headers=self._admin_headers())
            return None
        if kind in ("breaker_open", "breaker_close", "breaker_reset"):
            verb = kind.split("_", 1)[1]
            names = GUARDS.get(target, (target,)) if verb != "open" else (target,)
            for name in names:
                await self._http("POST", f"{self.target.url.rstrip('/')}/admin/breakers/{name}/{verb}",
                                 headers=self._admin_headers())
            if kind == "breaker_open":
                return lambda: self._http("POST", f"{self.target.url.rstrip('/')}/admin/breakers/{target}/close",
                                          headers=self._admin_headers())
            return None
        raise DrillError(f"unknown action {kind!r}")

    async def _remove_toxic(self, proxy: str, name: str) -> None:
        try:
            await self.toxiproxy.remove_toxic(proxy, name)
        except ToxiproxyNotFound:
            pass  # already gone: the goal of a removal is met

    async def _enable(self, proxy: str) -> None:
        await self.toxiproxy.enable(proxy)

    def needs(self, scenario: Scenario) -> set[str]:
        """What the scenario's actions need: ``toxiproxy``, ``stub:<dep>``, ``admin``."""
        out: set[str] = set()
        for a in [*scenario.method, *scenario.rollbacks]:
            if a.action.startswith(("toxic_", "proxy_")):
                out.add("toxiproxy")
            elif a.action.startswith("stub_"):
                out.add(f"stub:{STUB_ALIASES.get(a.target, a.target)}")
            else:
                out.add("admin")
        return out

    # -- counters ------------------------------------------------------------------------------
    async def stub_attempts(self, dependency: str) -> int | None:
        """Upstream calls the stand-in saw (data plane only); None when unknown/unreachable."""
        url = self.target.stubs.get(dependency)
        if url is None:
            return None
        try:
            stats = await self._http("GET", url.rstrip("/") + "/__stats__")
        except (DrillError, aiohttp.ClientError, TimeoutError):
            return None
        if not isinstance(stats, dict):
            return None
        if "search_calls" in stats:  # FakeWeaviate: gRPC data-plane counters
            return int(stats["search_calls"])
        return sum(int(v.get("requests", 0)) for k, v in stats.items()
                   if isinstance(v, dict) and k.startswith("POST "))

    async def breakers(self) -> dict[str, dict[str, Any]] | None:
        """``{guard: {state, opened, attempts}}`` from ``GET /admin/breakers``; None without admin access."""
        if not self.target.admin_token:
            return None
        try:
            snap = await self._http("GET", f"{self.target.url.rstrip('/')}/admin/breakers",
                                    headers=self._admin_headers())
        except (DrillError, aiohttp.ClientError, TimeoutError):
            return None
        out = {}
        for name, g in (snap or {}).items():
            breaker = g.get("breaker") or {}
            out[name] = {"state": g.get("state"), "opened": int((breaker.get("totals") or {}).get("opened", 0)),
                         "attempts": int((g.get("stats") or {}).get("attempts", 0))}
        return out

    async def snapshot(self) -> dict[str, Any]:
        """Breakers and stand-in attempt counters, read concurrently."""
        deps = sorted(self.target.stubs)
        results = await asyncio.gather(self.breakers(), *(self.stub_attempts(d) for d in deps))
        return {"breakers": results[0], "attempts": dict(zip(deps, results[1:]))}


# ---- load ------------------------------------------------------------------------------------------
@dataclass
class RequestRecord:
    """One request as the drill saw it. ``t`` is its start, seconds since the drill started."""

    i: int
    t: float
    stream: bool
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None          # hung | connection | incomplete_stream | bad_body
    mode: str | None = None
    degraded: bool | None = None
    degradations: list[dict[str, Any]] = field(default_factory=list)
    header_mode: str | None = None
    header_degraded: str | None = None
    discarded: bool = False

    @property
    def hung(self) -> bool:
        return self.error == "hung"

    @property
    def available(self) -> bool:
        """Answered, and not with a 5xx (a hang or a broken stream is not an answer)."""
        return self.status is not None and self.status < 500 and self.error is None

    def label_problem(self, allow_undegraded: Sequence[str] = ()) -> str | None:
        """Why this answer is not honestly labelled (None = labelled, or not an answer to judge)."""
        if self.status not in (200, 503) or self.error is not None:
            return None
        if self.mode not in MODES:
            return f"mode {self.mode!r} is not a contract mode"
        if not isinstance(self.degraded, bool):
            return "degraded missing"
        if self.degraded != bool(self.degradations):
            return f"degraded={self.degraded} but {len(self.degradations)} degradation(s)"
        if self.mode != "full" and not self.degraded and self.mode not in allow_undegraded:
            return f"mode {self.mode} but degraded false"
        if any(not (isinstance(d, dict) and d.get("component") and d.get("reason")) for d in self.degradations):
            return "a degradation without component/reason"
        if not self.stream:  # SSE answers carry the contract in their done event only
            if self.header_mode != self.mode:
                return f"X-RAG-Mode {self.header_mode!r} != body mode {self.mode!r}"
            if self.header_degraded != ("true" if self.degraded else "false"):
                return f"X-RAG-Degraded {self.header_degraded!r} != body degraded {self.degraded}"
        return None

    @property
    def short_circuited(self) -> bool:
        """Every degradation was a breaker short-circuit: the answer took the fallback path at once."""
        return bool(self.degradations) and all(d.get("reason") == "breaker_open" for d in self.degradations)


class LoadGenerator:
    """Open-loop POST /v1/query load (see the module docstring). Records go to ``records``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, scenario: Scenario, queries: Sequence[str],
                 clock: Callable[[], float], *, seed: int = 0) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/v1/query"
        self.load = scenario.load
        self.queries = list(queries)
        random.Random(seed).shuffle(self.queries)
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.skipped = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()

    async def run(self, max_s: float) -> None:
        """Send arrivals until :attr:`stop` is set, ``max_s`` seconds pass or ``max_requests`` were due."""
        load = self.load
        interval = 1.0 / load.rate_per_s
        start = self.clock()
        if load.duration_s is not None:
            max_s = min(max_s, load.duration_s)
        for i in range(load.max_requests):
            due = start + i * interval
            if due - start >= max_s or self.stop.is_set():
                break
            wait = due - self.clock()
            if wait > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), wait)
                    break
                except TimeoutError:
                    pass
            if len(self._in_flight) >= load.concurrency:
                self.skipped += 1
                continue
            stream = int((i + 1) * load.stream_share) > int(i * load.stream_share)
            record = RequestRecord(i=i, t=self.clock(), stream=stream)
            self.records.append(record)
            task = asyncio.create_task(self._one(record, self.queries[i % len(self.queries)]))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def drain(self) -> None:
        """Wait for in-flight requests; each ends by itself at its deadline + slack at the latest."""
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await self.drain()

    async def _one(self, rec: RequestRecord, query: str) -> None:
        load = self.load
        body: dict[str, Any] = {"query": query}
        if rec.stream:
            body["stream"] = True
        if load.top_k:
            body["top_k"] = load.top_k
        headers = {"X-Request-Timeout": f"{load.request_timeout_s:g}", "X-Client-Id": "chaos-drill"}
        timeout = aiohttp.ClientTimeout(total=load.request_timeout_s + load.slack_s)
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
                rec.status = resp.status
                rec.header_mode = resp.headers.get("X-RAG-Mode")
                rec.header_degraded = resp.headers.get("X-RAG-Degraded")
                if resp.content_type == "text/event-stream":
                    contract = await _read_sse(resp, rec)
                    if contract is None:
                        rec.error = "incomplete_stream"
                else:
                    contract = await _read_json(resp)
                    if contract is None and resp.status in (200, 503):
                        rec.error = "bad_body"
                if isinstance(contract, dict):
                    rec.mode = contract.get("mode")
                    rec.degraded = contract.get("degraded")
                    rec.degradations = list(contract.get("degradations") or [])
        except TimeoutError:
            rec.error = "hung"
        except aiohttp.ClientError as exc:
            rec.error = "connection"
            log.debug("request %d: %r", rec.i, exc)
        finally:
            rec.latency_ms = (time.perf_counter() - t0) * 1e3


async def _read_json(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _read_sse(resp: aiohttp.ClientResponse, rec: RequestRecord) -> dict[str, Any] | None:
    """Read an SSE answer; returns the ``done`` event's contract (None if the stream ended without one)."""
    event, data, done = "", [], None
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if event == "discard":
                rec.discarded = True
            elif event == "done" and data:
                try:
                    done = json.loads("\n".join(data))
                except ValueError:
                    done = None
            event, data = "", []
    return done


# ---- statistics --------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _in(t: float, spans: Sequence[tuple[float, float]], skip_s: float = 0.0) -> bool:
    return any(s + skip_s <= t < e for s, e in spans)


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


# ---- the drill ----------------------------------------------------------------------------------------
class Drill:
    """One run of one scenario. ``await drill.run()`` returns the journal (also kept in ``journal``);
    on cancellation the drill rolls back, writes its journal (``status: aborted``) and re-raises.

    ``out_dir``: where journal.json, report.md and timeline.png go (None = write nothing);
    ``sample_interval_s``: breaker/attempt polling period; ``png``: draw the timeline.
    """

    def __init__(self, scenario: Scenario, target: DrillTarget, *, out_dir: Path | None = None,
                 sample_interval_s: float = 1.0, png: bool = True, seed: int = 0,
                 queries: Sequence[str] | None = None, on_event: Callable[[str], None] | None = None) -> None:
        self.scenario = scenario
        self.target = target
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_interval_s = sample_interval_s
        self.png = png
        self.seed = seed
        self._queries = list(queries) if queries else None
        self._say = on_event or (lambda msg: log.info("%s", msg))
        self.journal: dict[str, Any] | None = None
        self.run_log: list[dict[str, Any]] = []
        self.rollback_log: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.cleanup_problems: list[str] = []
        self.marks: dict[str, dict[str, Any]] = {}
        self.windows: list[dict[str, Any]] = []
        self._active: dict[int, tuple[str, Undo]] = {}
        self._t0 = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.phase_times: dict[str, list[float | None]] = {"before": [0.0, None], "method": [None, None],
                                                           "after": [None, None]}

    # -- time -----------------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the drill started."""
        assert self._loop is not None
        return self._loop.time() - self._t0

    async def _sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- run ------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        started_wall = time.time()
        sc = self.scenario
        status, error, cancelled = "completed", None, False
        before_met: bool | None = None
        connector = aiohttp.TCPConnector(limit=max(sc.load.concurrency + 8, 16))
        session = aiohttp.ClientSession(connector=connector)
        controls = Controls(self.target, session)
        load = LoadGenerator(session, self.target.url, sc, self._queries or sc.queries_list(), self.now,
                             seed=self.seed)
        load_task: asyncio.Task[None] | None = None
        sampler: asyncio.Task[None] | None = None
        try:
            self._say(f"[{sc.id}] pre-flight")
            await self._preflight(session, controls)
            load_task = asyncio.create_task(load.run(max_s=sc.total_s + 1.0), name="drill-load")
            sampler = asyncio.create_task(self._sample_loop(controls), name="drill-sampler")
            await self._mark(controls, "before_start")
            self._say(f"[{sc.id}] steady state before ({sc.steady_state_hypothesis.before_s:g}s)")
            await self._sleep_until(sc.steady_state_hypothesis.before_s)
            await self._mark(controls, "before_end")
            self.phase_times["before"][1] = self.marks["before_end"]["t"]
            before_met = all(p["met"] for p in self._evaluate_phase("before", load, final=False))
            if not before_met:
                status, error = "failed", "steady state not met before the method: method skipped"
                self._say(f"[{sc.id}] {error}")
            else:
                self._say(f"[{sc.id}] method ({sc.method_duration_s:g}s)")
                await self._run_method(controls)
                self.phase_times["after"][0] = self.now()
                await self._mark(controls, "after_start")
                self._say(f"[{sc.id}] after ({sc.steady_state_hypothesis.after_s:g}s)")
                await self._sleep_until(self.phase_times["after"][0] + sc.steady_state_hypothesis.after_s)
                await self._mark(controls, "after_end")
                self.phase_times["after"][1] = self.now()
        except asyncio.CancelledError:
            status, cancelled = "aborted", True
            error = "interrupted: rolled back"
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._say(f"[{sc.id}] interrupted: rolling back")
        except (DrillError, ToxiproxyError, aiohttp.ClientError, TimeoutError) as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            self._say(f"[{sc.id}] failed: {error}")
        finally:
            # Clean-up must finish whatever happens: every step is bounded, and a second cancellation
            # (another Ctrl-C) is noted but does not stop the rollbacks or lose the journal.
            load.stop.set()
            rollback_bound = CONTROL_TIMEOUT_S * (len(self._active) + len(sc.rollbacks) + 1) + 1.0
            cancelled |= await self._cleanup_step("rollbacks", self._rollback(controls), rollback_bound)
            if load_task is not None:
                cancelled |= await self._cleanup_step("stop load", asyncio.gather(load_task, return_exceptions=True),
                                                      CONTROL_TIMEOUT_S)
            cancelled |= await self._cleanup_step("in-flight requests", load.cancel() if cancelled else load.drain(),
                                                  sc.load.request_timeout_s + sc.load.slack_s + 2.0)
            if sampler is not None:
                sampler.cancel()
                cancelled |= await self._cleanup_step("sampler", asyncio.gather(sampler, return_exceptions=True),
                                                      CONTROL_TIMEOUT_S)
            cancelled |= await self._cleanup_step("close clients", _close_all(controls, session), CONTROL_TIMEOUT_S)
            if cancelled and status != "aborted":
                status, error = "aborted", (error or "interrupted during clean-up")
            self.journal = self._journal(load, status, error, started_wall)
            if self.out_dir is not None:
                cancelled |= await self._cleanup_step("write outputs", self.write_outputs(), 60.0)
        if cancelled:
            raise asyncio.CancelledError()
        return self.journal

    async def _cleanup_step(self, what: str, aw: Awaitable[Any], bound_s: float) -> bool:
        """Await ``aw`` for at most ``bound_s`` seconds; returns True if the task was cancelled meanwhile."""
        try:
            await asyncio.wait_for(aw, bound_s)
        except TimeoutError:
            self.cleanup_problems.append(f"{what}: not done after {bound_s:g}s, abandoned")
            self._say(f"[{self.scenario.id}] clean-up: {what} not done after {bound_s:g}s, abandoned")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.cleanup_problems.append(f"{what}: interrupted")
            return True
        return False

    async def _preflight(self, session: aiohttp.ClientSession, controls: Controls) -> None:
        url = self.target.url.rstrip("/") + "/readyz"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    raise DrillError(f"gateway not ready: GET {url} -> {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DrillError(f"gateway unreachable: GET {url}: {exc!r}") from None
        for need in sorted(controls.needs(self.scenario)):
            if need == "toxiproxy":
                if controls.toxiproxy is None:
                    raise DrillError("the method has toxic/proxy actions: pass --toxiproxy URL")
                await controls.toxiproxy.version()
            elif need.startswith("stub:"):
                await controls._http("GET", controls._stub(need[5:]) + "/__faults__")
            elif need == "admin":
                await controls._http("GET", self.target.url.rstrip("/") + "/admin/breakers",
                                     headers=controls._admin_headers())

    async def _mark(self, controls: Controls, label: str) -> None:
        t = self.now()
        snap = await controls.snapshot()
        self.marks[label] = {"t": t, **snap}

    async def _sample_loop(self, controls: Controls) -> None:
        while True:
            t = self.now()
            try:
                snap = await asyncio.wait_for(controls.snapshot(), CONTROL_TIMEOUT_S)
            except TimeoutError:
                snap = {"breakers": None, "attempts": {}}
            self.samples.append({"t": round(t, 3), **snap})
            await asyncio.sleep(max(0.0, self.sample_interval_s - (self.now() - t)))

    async def _run_method(self, controls: Controls) -> None:
        sc = self.scenario
        m0 = self.now()
        self.phase_times["method"][0] = m0
        windows = sc.fault_windows()
        # start_s/end_s: when the window's first fault was in place / its last undo began (requests are
        # classified by these); the boundary snapshots (for counters) are taken just outside them.
        self.windows = [{"planned": [s, e], "start_s": None, "end_s": None, "actions": []} for s, e in windows]
        window_of: dict[int, int] = {}
        events: list[tuple[float, int, str, Any]] = []
        for i, action in enumerate(sc.method):
            events.append((action.at_s, 3, "apply", i))
            if action.action in FAULT_ACTIONS:
                events.append((action.at_s + (action.duration_s or sc.method_duration_s), 0, "undo", i))
                for w, (s, e) in enumerate(windows):
                    if s <= action.at_s <= e:
                        self.windows[w]["actions"].append(action.label)
                        window_of[i] = w
        for w, (s, e) in enumerate(windows):
            events.append((s, 2, "mark", (w, "start")))
            events.append((e, 1, "mark", (w, "end")))
        events.sort(key=lambda ev: (ev[0], ev[1]))
        for at, _, kind, payload in events:
            await self._sleep_until(m0 + at)
            if kind == "mark":
                w, edge = payload
                await self._mark(controls, f"w{w}_{edge}")
                if edge == "end" and self.windows[w]["end_s"] is None:
                    self.windows[w]["end_s"] = round(self.marks[f"w{w}_end"]["t"], 3)
            elif kind == "apply":
                await self._apply(controls, payload)
                w = window_of.get(payload)
                if w is not None and self.windows[w]["start_s"] is None:
                    self.windows[w]["start_s"] = round(self.now(), 3)
            else:
                w = window_of.get(payload)
                if w is not None and self.windows[w]["end_s"] is None and at >= windows[w][1]:
                    self.windows[w]["end_s"] = round(self.now(), 3)
                await self._undo(payload)
        await self._sleep_until(m0 + sc.method_duration_s)
        self.phase_times["method"][1] = self.now()

    async def _apply(self, controls: Controls, index: int) -> None:
        action = self.scenario.method[index]
        entry = {"kind": "apply", "at_s": action.at_s, "t_s": round(self.now(), 3), "action": action.action,
                 "target": action.target, "attributes": action.attributes, "name": action.label,
                 "duration_s": action.duration_s}
        try:
            undo = await controls.apply(action, index)
        except (DrillError, ToxiproxyError, aiohttp.ClientError, TimeoutError) as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            self.run_log.append(entry)
            raise DrillError(f"action {action.label!r} failed: {exc}") from exc
        entry["status"] = "succeeded"
        self.run_log.append(entry)
        self._say(f"[{self.scenario.id}] t={entry['t_s']:.1f}s {action.label}")
        if undo is not None:
            self._active[index] = (action.label, undo)

    async def _undo(self, index: int, log_to: list[dict[str, Any]] | None = None) -> None:
        item = self._active.pop(index, None)
        if item is None:
            return
        label, undo = item
        entry: dict[str, Any] = {"kind": "undo", "t_s": round(self.now(), 3), "name": f"undo {label}"}
        try:
            await undo()
            entry["status"] = "succeeded"
        except (DrillError, ToxiproxyError, aiohttp.ClientError, TimeoutError) as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        (self.run_log if log_to is None else log_to).append(entry)

    async def _rollback(self, controls: Controls) -> None:
        """Undo what is still applied (newest first), then the scenario's rollbacks. Never raises."""
        for index in sorted(self._active, reverse=True):
            await self._undo(index, log_to=self.rollback_log)
        for rb in self.scenario.rollbacks:
            entry: dict[str, Any] = {"kind": "rollback", "t_s": round(self.now(), 3), "action": rb.action,
                                     "target": rb.target, "attributes": rb.attributes, "name": rb.name or
                                     f"{rb.action} {rb.target}"}
            try:
                await controls.apply(rb)
                entry["status"] = "succeeded"
            except (DrillError, ToxiproxyError, aiohttp.ClientError, TimeoutError) as exc:
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            self.rollback_log.append(entry)
        if self.rollback_log:
            failed = [e for e in self.rollback_log if e["status"] != "succeeded"]
            self._say(f"[{self.scenario.id}] rollbacks: {len(self.rollback_log) - len(failed)} ok"
                      + (f", {len(failed)} FAILED" if failed else ""))

    # -- evaluation -----------------------------------------------------------------------------
    def _spans(self, phase: str) -> list[tuple[float, float]]:
        if phase == "before":
            end = self.phase_times["before"][1]
            return [(0.0, end)] if end is not None else []
        if phase == "during":
            return [(w["start_s"], w["end_s"] if w["end_s"] is not None else self.now())
                    for w in self.windows if w["start_s"] is not None]
        start, end = self.phase_times["after"]
        if start is None:
            return []
        return [(start, end if end is not None else self.now())]

    def _mark_pairs(self, phase: str) -> list[tuple[str, str]]:
        if phase == "before":
            return [("before_start", "before_end")]
        if phase == "after":
            return [("after_start", "after_end")]
        return [(f"w{i}_start", f"w{i}_end") for i in range(len(self.windows))]

    def _evaluate_phase(self, phase: str, load: LoadGenerator, *, final: bool = True) -> list[dict[str, Any]]:
        spans = self._spans(phase)
        results = []
        for probe in self.scenario.steady_state_hypothesis.probes:
            if phase in probe.phases:
                results.append(self._evaluate(probe, phase, spans, load, final))
        return results

    def _recovered_at(self, dependency: str) -> float | None:
        """First sampled time after the method at which the dependency's breaker was closed."""
        method_end = self.phase_times["method"][1]
        if method_end is None:
            return None
        guard = GUARDS.get(dependency, (dependency,))[0]
        for s in self.samples:
            states = s.get("breakers") or {}
            if s["t"] >= method_end and (states.get(guard) or {}).get("state") == "closed":
                return s["t"]
        return None

    def _evaluate(self, probe: Probe, phase: str, spans: list[tuple[float, float]], load: LoadGenerator,
                  final: bool) -> dict[str, Any]:
        tol = probe.tolerance
        dependency = probe.dependency or self.scenario.target[0]
        start_skip = probe.skip_s
        if probe.since == "recovered":
            rec_at = self._recovered_at(dependency)
            if rec_at is not None:
                spans = [(max(s, rec_at), e) for s, e in spans if e > rec_at]
        records = [r for r in load.records if _in(r.t, spans, start_skip)]
        done = [r for r in records if r.latency_ms is not None]
        if not final:
            records = done
        answers = [r for r in done if r.status == 200 and r.error is None]
        result: dict[str, Any] = {"name": probe.name, "type": probe.type, "phase": phase,
                                  "tolerance": tol.model_dump(exclude_defaults=True), "requests": len(records)}
        value: float | None = None
        limit: float | None = None
        met: bool
        detail: dict[str, Any] = {}
        kind = probe.type
        if kind == "availability":
            value = sum(r.available for r in records) / len(records) if records else None
            detail = {"by_status": _status_counts(records)}
            met = value is not None and value >= tol.min
            limit = tol.min
        elif kind == "latency_p99":
            latencies = [r.latency_ms for r in done if not r.hung]
            value = percentile(latencies, 99)
            limit = tol.max
            if tol.plus_fallback_p99:
                fallback = percentile([r.latency_ms for r in answers if r.short_circuited], 99)
                source = "short-circuited requests"
                if fallback is None:
                    fallback = percentile([r.latency_ms for r in load.records if r.latency_ms is not None
                                           and _in(r.t, self._spans("before"))], 99)
                    source = "baseline requests"
                detail["fallback_p99_ms"] = _round(fallback, 1)
                detail["fallback_p99_from"] = source
                limit = tol.max + (fallback or 0.0)
            detail["p50_ms"] = _round(percentile(latencies, 50), 1)
            met = value is not None and value <= limit
        elif kind == "mode":
            modes = Counter(r.mode for r in answers)
            value = sum(modes[m] for m in tol.expect) / len(answers) if answers else None
            detail = {"modes": dict(modes)}
            limit = tol.min
            met = value is not None and value >= tol.min
        elif kind == "degraded_labelled":
            judged = [r for r in done if r.status in (200, 503) and r.error is None]
            problems = [(r.i, r.label_problem(tol.allow_undegraded)) for r in judged]
            bad = [(i, p) for i, p in problems if p]
            value = (len(judged) - len(bad)) / len(judged) if judged else None
            detail = {"judged": len(judged), "unlabelled": len(bad), "examples": [p for _, p in bad[:3]],
                      "discard_events": sum(r.discarded for r in judged)}
            limit = tol.min
            met = value is not None and value >= tol.min
        elif kind == "upstream_attempts_ratio":
            attempts, source = self._attempts(dependency, phase, probe.source)
            value = attempts / len(records) if attempts is not None and records else None
            detail = {"attempts": attempts, "source": source}
            limit = tol.max
            met = value is not None and value <= tol.max
            if attempts is not None and not records:
                value, met = 0.0, attempts == 0
        elif kind == "breaker_transitions":
            opens = self._opens(dependency, phase)
            window_s = sum(e - s for s, e in spans)
            value = None if opens is None else 2.0 * opens  # every open is followed by a close (or will be)
            if tol.max is not None:
                limit = tol.max
            else:
                limit = max(2.0, tol.max_per_min * window_s / 60.0)
            detail = {"opens": opens, "window_s": round(window_s, 3)}
            met = value is not None and value <= limit
        elif kind == "hung_requests":
            value = float(sum(r.hung for r in records))
            limit = tol.max
            met = value <= tol.max
        elif kind == "recovery_time":
            rec_at = self._recovered_at(dependency)
            method_end = self.phase_times["method"][1]
            value = None if rec_at is None or method_end is None else max(0.0, rec_at - method_end)
            limit = tol.max
            detail = {"guard": GUARDS.get(dependency, (dependency,))[0],
                      "resolution_s": self.sample_interval_s}
            met = value is not None and value <= tol.max
        elif kind == "degraded_rate":
            value = sum(bool(r.degraded) for r in answers) / len(answers) if answers else None
            limit = tol.max if tol.max is not None else tol.min
            detail = {"answers": len(answers), "since": probe.since}
            met = value is not None and (tol.max is None or value <= tol.max) and (tol.min is None or value >= tol.min)
        else:  # pragma: no cover - the schema forbids it
            raise DrillError(f"unknown probe type {kind}")
        if value is None and "reason" not in detail:
            detail["reason"] = "no data in this phase"
        result.update(value=_round(value, 4), limit=_round(limit, 4), met=bool(met), detail=detail)
        return result

    def _attempts(self, dependency: str, phase: str, source: str) -> tuple[int | None, str]:
        use_stub = source == "stub" or (source == "auto" and dependency in self.target.stubs)
        total = 0
        for a, b in self._mark_pairs(phase):
            ma, mb = self.marks.get(a), self.marks.get(b)
            if ma is None or mb is None:
                return None, "missing snapshot"
            if use_stub:
                x, y = (ma.get("attempts") or {}).get(dependency), (mb.get("attempts") or {}).get(dependency)
            else:
                x, y = _guard_sum(ma, dependency, "attempts"), _guard_sum(mb, dependency, "attempts")
            if x is None or y is None:
                return None, "stand-in /__stats__" if use_stub else "gateway /admin/breakers"
            total += y - x if y >= x else y  # a counter reset in between: count from zero
        return total, "stand-in /__stats__" if use_stub else "gateway /admin/breakers"

    def _opens(self, dependency: str, phase: str) -> int | None:
        total = 0
        for a, b in self._mark_pairs(phase):
            ma, mb = self.marks.get(a), self.marks.get(b)
            if ma is None or mb is None:
                return None
            x, y = _guard_sum(ma, dependency, "opened", first_only=True), _guard_sum(
                mb, dependency, "opened", first_only=True)
            if x is None or y is None:
                return None
            total += y - x if y >= x else y
        return total

    # -- journal ------------------------------------------------------------------------------
    def _journal(self, load: LoadGenerator, status: str, error: str | None, started_wall: float) -> dict[str, Any]:
        sc = self.scenario
        ran_method = self.phase_times["method"][0] is not None
        steady: dict[str, Any] = {}
        for phase in ("before", "during", "after"):
            if phase != "before" and not ran_method:
                steady[phase] = None
                continue
            probes = self._evaluate_phase(phase, load)
            steady[phase] = {"steady_state_met": all(p["met"] for p in probes), "probes": probes}
        deviated = any(steady[p] is not None and not steady[p]["steady_state_met"] for p in ("during", "after"))
        if status == "completed" and steady["before"] is not None and not steady["before"]["steady_state_met"]:
            deviated = True  # late answers of the baseline broke it after the method had started
        verdict = {"completed": "deviated" if deviated else "pass"}.get(status, status)
        records = load.records
        done = [r for r in records if r.latency_ms is not None]
        return {
            "chaos": JOURNAL_FORMAT,
            "scenario": sc.id, "title": sc.title, "description": sc.description, "tags": sc.tags,
            "target_dependencies": sc.target,
            "status": status, "deviated": deviated, "verdict": verdict, "error": error,
            "start": _iso(started_wall), "end": _iso(time.time()), "duration_s": round(self.now(), 3),
            "target": self.target.describe(),
            "experiment": sc.model_dump(mode="json", by_alias=True),
            "phases": {k: [_round(v[0]), _round(v[1])] for k, v in self.phase_times.items()},
            "fault_windows": self.windows,
            "steady_states": steady,
            "run": self.run_log,
            "rollbacks": self.rollback_log,
            "cleanup_problems": self.cleanup_problems,
            "load": {"arrivals": len(records) + load.skipped, "sent": len(records), "skipped": load.skipped,
                     "completed": len(done), "hung": sum(r.hung for r in records),
                     "by_status": _status_counts(records), "streams": sum(r.stream for r in records),
                     "rate_per_s": sc.load.rate_per_s, "concurrency": sc.load.concurrency},
            "samples": self._per_second(records),
            "requests": [_compact(r) for r in records],
        }

    def _per_second(self, records: list[RequestRecord]) -> list[dict[str, Any]]:
        if not records and not self.samples:
            return []
        end = max([r.t for r in records] + [s["t"] for s in self.samples] + [0.0])
        out = []
        for second in range(int(end) + 1):
            rs = [r for r in records if second <= r.t < second + 1]
            lat = [r.latency_ms for r in rs if r.latency_ms is not None and not r.hung]
            polled = [s for s in self.samples if second <= s["t"] < second + 1]
            last = polled[-1] if polled else None
            out.append({
                "t": second, "requests": len(rs), "available": sum(r.available for r in rs),
                "hung": sum(r.hung for r in rs), "errors": sum(r.error is not None and not r.hung for r in rs),
                "p50_ms": _round(percentile(lat, 50), 1), "p99_ms": _round(percentile(lat, 99), 1),
                "modes": dict(Counter(r.mode or (r.error or f"http_{r.status}") for r in rs)),
                "degraded": sum(bool(r.degraded) for r in rs),
                "breakers": {k: v.get("state") for k, v in ((last or {}).get("breakers") or {}).items()},
                "attempts": dict((last or {}).get("attempts") or {}),
            })
        return out

    async def write_outputs(self) -> dict[str, str]:
        """journal.json, report.md and (unless ``png=False``) timeline.png into ``out_dir``."""
        from chaos.report import plot_timeline, render_report

        assert self.journal is not None and self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"journal": str(self.out_dir / "journal.json"), "report": str(self.out_dir / "report.md")}
        if self.png:
            paths["timeline"] = str(self.out_dir / "timeline.png")
        self.journal["outputs"] = paths
        if self.png:
            try:
                await asyncio.to_thread(plot_timeline, self.journal, Path(paths["timeline"]))
            except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the journal
                self.journal["outputs"]["timeline_error"] = f"{type(exc).__name__}: {exc}"
                paths.pop("timeline", None)
        Path(paths["journal"]).write_text(json.dumps(self.journal, indent=2, default=str), encoding="utf-8")
        Path(paths["report"]).write_text(render_report(self.journal), encoding="utf-8")
        return paths


async def _close_all(controls: Controls, session: aiohttp.ClientSession) -> None:
    try:
        await controls.close()
    finally:
        await session.close()


def _guard_sum(mark: dict[str, Any], dependency: str, key: str, *, first_only: bool = False) -> int | None:
    breakers = mark.get("breakers")
    if not breakers:
        return None
    guards = GUARDS.get(dependency, (dependency,))
    if first_only:
        guards = guards[:1]
    values = [breakers[g][key] for g in guards if g in breakers]
    return sum(values) if values else None


def _compact(r: RequestRecord) -> dict[str, Any]:
    """One request in the journal: start (s), latency (ms), outcome, and its labels."""
    out: dict[str, Any] = {"i": r.i, "t": round(r.t, 3), "ms": _round(r.latency_ms, 1), "status": r.status,
                           "mode": r.mode, "degraded": r.degraded,
                           "degradations": [f"{d.get('component')}:{d.get('reason')}" for d in r.degradations]}
    if r.stream:
        out["stream"] = True
    if r.discarded:
        out["discard"] = True
    if r.error:
        out["error"] = r.error
    return out


def _status_counts(records: Sequence[RequestRecord]) -> dict[str, int]:
    return dict(Counter(r.error if r.error else str(r.status) for r in records))


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds")


async def run_scenario(scenario: Scenario, target: DrillTarget, **kwargs: Any) -> dict[str, Any]:
    """Run one drill and return its journal (see :class:`Drill` for the keyword arguments)."""
    return await Drill(scenario, target, **kwargs).run()


def summarize(journals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The verdict table of several drills (summary.json's content)."""
    rows = []
    for j in journals:
        failed = [f"{p['phase']}:{p['name']}" for phase in ("before", "during", "after")
                  for p in ((j["steady_states"].get(phase) or {}).get("probes") or []) if not p["met"]]
        spans = [(w["start_s"], w["end_s"]) for w in j["fault_windows"] if w.get("start_s") is not None
                 and w.get("end_s") is not None]
        during = [r for r in j.get("requests", []) if _in(r["t"], spans)]
        p99 = percentile([r["ms"] for r in during if r["ms"] is not None and r.get("error") != "hung"], 99)
        answers = [r for r in during if r["status"] == 200 and not r.get("error")]
        modes = Counter(r["mode"] for r in answers)
        avail = [p["value"] for phase in ("before", "during", "after")
                 for p in ((j["steady_states"].get(phase) or {}).get("probes") or [])
                 if p["type"] == "availability" and p["value"] is not None]
        rows.append({"scenario": j["scenario"], "title": j["title"], "verdict": j["verdict"], "status": j["status"],
                     "deviated": j["deviated"], "failed_probes": failed, "requests": j["load"]["sent"],
                     "hung": j["load"]["hung"], "min_availability": min(avail) if avail else None,
                     "p99_during_ms": _round(p99, 1), "duration_s": j["duration_s"], "error": j.get("error"),
                     "degraded_during": _round(sum(bool(r["degraded"]) for r in answers) / len(answers), 3)
                     if answers else None,
                     "modes_during": dict(modes.most_common()),
                     "report": (j.get("outputs") or {}).get("report")})
    verdicts = Counter(r["verdict"] for r in rows)
    return {"chaos": JOURNAL_FORMAT, "generated": _iso(time.time()), "scenarios": rows,
            "totals": dict(verdicts), "passed": all(r["verdict"] == "pass" for r in rows) and bool(rows)}


def write_summary(journals: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """summary.json + summary.md (the verdict table) in ``out_dir``."""
    from chaos.report import render_summary

    summary = summarize(journals)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "summary.md").write_text(render_summary(summary, out_dir), encoding="utf-8")
    return summary


__all__ = ["Controls", "DEFAULT_PROXIES", "Drill", "DrillError", "DrillTarget", "LoadGenerator", "RequestRecord",
           "percentile", "run_scenario", "summarize", "write_summary"]
