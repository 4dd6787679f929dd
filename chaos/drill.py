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
import time
from collections import Counter
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import aiohttp

from chaos.controls import (CONTROL_TIMEOUT_S, DEFAULT_PROXIES, GUARDS, STUB_ALIASES, Controls, DrillError,
                            DrillTarget, Undo)
from chaos.events import DrillEvents
from chaos.load import LoadGenerator, RequestRecord
from chaos.probes import EVALUATORS, ProbeInput, in_spans, percentile, rounded, status_counts
from chaos.proxy.client import ToxiproxyError
from chaos.scenario import FAULT_ACTIONS, Probe, Scenario

log = logging.getLogger("chaos.drill")

JOURNAL_FORMAT = "rag-sidecar-drill/1"


# ---- the drill ----------------------------------------------------------------------------------------
class _SafeguardTripped(Exception):
    """The safeguard stopped the method (see :meth:`Drill._run_method_safely`)."""


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
        self.controls: Controls | None = None
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
        self.aborted_by_safeguard: dict[str, Any] | None = None

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
        controls = self.controls = Controls(self.target, session)
        load = LoadGenerator(session, self.target.url, sc, self._queries or sc.queries_list(), self.now,
                             seed=self.seed)
        load_task: asyncio.Task[None] | None = None
        sampler: asyncio.Task[None] | None = None
        events = DrillEvents(self.target.dogstatsd)
        try:
            self._say(f"[{sc.id}] pre-flight")
            await self._preflight(session, controls)
            events.started(sc.id, sc.title, sc.target)
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
                await self._run_method_safely(controls, load)
                if self.aborted_by_safeguard is not None:
                    raise _SafeguardTripped()
                after_start = self.phase_times["after"][0] = self.now()
                await self._mark(controls, "after_start")
                self._say(f"[{sc.id}] after ({sc.steady_state_hypothesis.after_s:g}s)")
                await self._sleep_until(after_start + sc.steady_state_hypothesis.after_s)
                await self._mark(controls, "after_end")
                self.phase_times["after"][1] = self.now()
        except _SafeguardTripped:
            trip = self.aborted_by_safeguard or {}
            status, error = "aborted", (f"aborted_by_safeguard: availability "
                                        f"{trip['availability']:.2f} < "
                                        f"{trip['floor']:.2f} over the last "
                                        f"{trip['window_s']:g}s: fault undone early")
            self._say(f"[{sc.id}] {error}")
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
            cancelled |= await self._cleanup_step("close clients", _close_all(controls, session, load),
                                                  CONTROL_TIMEOUT_S)
            if cancelled and status != "aborted":
                status, error = "aborted", (error or "interrupted during clean-up")
            self.journal = self._journal(load, status, error, started_wall)
            if status != "failed" or self.phase_times["method"][0] is not None:  # a drill that ran
                events.ended(sc.id, sc.title, self.journal["verdict"], error or "")
            events.close()
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
                win = window_of.get(payload)
                if win is not None and self.windows[win]["start_s"] is None:
                    self.windows[win]["start_s"] = round(self.now(), 3)
            else:
                win = window_of.get(payload)
                if win is not None and self.windows[win]["end_s"] is None and at >= windows[win][1]:
                    self.windows[win]["end_s"] = round(self.now(), 3)
                await self._undo(payload)
        await self._sleep_until(m0 + sc.method_duration_s)
        self.phase_times["method"][1] = self.now()

    async def _run_method_safely(self, controls: Controls, load: LoadGenerator) -> None:
        """:meth:`_run_method` under the scenario's safeguard: a watcher checks the availability of the
        requests finished in the last ``window_s`` every half second; below the floor it stops the
        method (the ``finally`` rollbacks undo every fault) and notes ``aborted_by_safeguard``."""
        guard = self.scenario.safeguard
        method = asyncio.create_task(self._run_method(controls), name="drill-method")
        if guard.availability_min <= 0:
            await method
            return

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.5)
                now = self.now()
                recent = [r for r in load.records if r.latency_ms is not None
                          and now - guard.window_s <= r.t + r.latency_ms / 1e3 <= now]
                if len(recent) < guard.min_requests:
                    continue
                availability = sum(r.available for r in recent) / len(recent)
                if availability < guard.availability_min:
                    self.aborted_by_safeguard = {"at_s": round(now, 3), "availability": round(availability, 4),
                                                 "floor": guard.availability_min, "window_s": guard.window_s,
                                                 "requests": len(recent)}
                    return

        watcher = asyncio.create_task(watch(), name="drill-safeguard")
        try:
            await asyncio.wait({method, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (method, watcher):
                task.cancel()
            await asyncio.gather(method, watcher, return_exceptions=True)
        if method.done() and not method.cancelled() and method.exception() is not None:
            raise method.exception()  # type: ignore[misc]
        if self.aborted_by_safeguard is not None and self.phase_times["method"][1] is None:
            self.phase_times["method"][1] = self.now()
            for w in self.windows:
                if w["start_s"] is not None and w["end_s"] is None:
                    w["end_s"] = round(self.now(), 3)

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
    def spans(self, phase: str) -> list[tuple[float, float]]:
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
        spans = self.spans(phase)
        results = []
        for probe in self.scenario.steady_state_hypothesis.probes:
            if phase in probe.phases:
                results.append(self._evaluate(probe, phase, spans, load, final))
        return results

    def recovered_at(self, dependency: str) -> float | None:
        """First sampled time after the method at which the dependency's breaker was closed."""
        method_end = self.phase_times["method"][1]
        if method_end is None:
            return None
        guard = self.guard_of(dependency)
        for s in self.samples:
            states = s.get("breakers") or {}
            if s["t"] >= method_end and (states.get(guard) or {}).get("state") == "closed":
                return s["t"]
        return None

    def _evaluate(self, probe: Probe, phase: str, spans: list[tuple[float, float]], load: LoadGenerator,
                  final: bool) -> dict[str, Any]:
        dependency = probe.dependency or self.scenario.target[0]
        if probe.since == "recovered":
            rec_at = self.recovered_at(dependency)
            if rec_at is not None:
                spans = [(max(s, rec_at), e) for s, e in spans if e > rec_at]
        records = [r for r in load.records if in_spans(r.t, spans, probe.skip_s)]
        done = [r for r in records if r.latency_ms is not None]
        if not final:
            records = done
        answers = [r for r in done if r.status == 200 and r.error is None]
        evaluator = EVALUATORS.get(probe.type)
        if evaluator is None:  # pragma: no cover - the schema forbids it
            raise DrillError(f"unknown probe type {probe.type}")
        verdict = evaluator(ProbeInput(probe, phase, dependency, spans, records, done, answers, load.records, self))
        detail = verdict.detail
        if verdict.value is None and "reason" not in detail:
            detail["reason"] = "no data in this phase"
        return {"name": probe.name, "type": probe.type, "phase": phase,
                "tolerance": probe.tolerance.model_dump(exclude_defaults=True), "requests": len(records),
                "value": rounded(verdict.value, 4), "limit": rounded(verdict.limit, 4), "met": bool(verdict.met),
                "detail": detail}

    def final_state(self, dependency: str, phase: str) -> str | None:
        """The dependency's breaker state at the end of the phase (its last boundary snapshot)."""
        pairs = self._mark_pairs(phase)
        mark = self.marks.get(pairs[-1][1]) if pairs else None
        breakers = (mark or {}).get("breakers") or {}
        return (breakers.get(self.guard_of(dependency)) or {}).get("state")

    def blamed_components(self, dependency: str) -> set[str]:
        """The degradation components that name ``dependency`` (its guards)."""
        return {dependency, *GUARDS.get(dependency, ())}

    def all_faulted_components(self) -> set[str]:
        return set().union(*(self.blamed_components(d) for d in self.scenario.target))

    def proxy_counter(self, dependency: str, phase: str, key: str) -> tuple[int | None, str]:
        """A fault-proxy counter of ``dependency``'s proxy over the phase (boundary snapshots)."""
        proxy = self.target.proxies.get(dependency, dependency)
        total = 0
        for a, b in self._mark_pairs(phase):
            ma, mb = self.marks.get(a), self.marks.get(b)
            xa = ((ma or {}).get("proxies") or {}).get(proxy, {}).get(key)
            xb = ((mb or {}).get("proxies") or {}).get(proxy, {}).get(key)
            if xa is None or xb is None:
                return None, proxy
            total += xb - xa if xb >= xa else xb
        return total, proxy

    def guard_of(self, dependency: str) -> str:
        """The guard whose breaker stands for ``dependency`` (the first of its guards)."""
        return GUARDS.get(dependency, (dependency,))[0]

    def attempts(self, dependency: str, phase: str, source: str) -> tuple[int | None, str]:
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

    def slow_header_lives(self) -> list[float]:
        """How long each slow_clients header-trickling connection stayed open (s)."""
        return list(self.controls.slow_header_lives) if self.controls is not None else []

    def noisy_clients(self) -> list[Any]:
        """What each noisy_client action got (:class:`chaos.controls.NoisyClientStats`)."""
        return list(self.controls.noisy_clients) if self.controls is not None else []

    def peak_in_flight(self, dependency: str, phase: str, model: str | None) -> int | None:
        """The most calls ``dependency``'s stand-in served at once (for ``model`` alone if given), from its
        counters reset before the drill to the end of the phase; None without such a stand-in counter."""
        ends = [self.marks.get(b) for _, b in self._mark_pairs(phase)]
        peaks = [((m or {}).get("peak_in_flight") or {}).get(dependency) for m in ends]
        values = [p.get(model or "", 0) for p in peaks if p is not None]
        return max(values) if values else None

    def opens(self, dependency: str, phase: str) -> int | None:
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
            "aborted_by_safeguard": self.aborted_by_safeguard,
            "start": _iso(started_wall), "end": _iso(time.time()), "duration_s": round(self.now(), 3),
            "target": self.target.describe(),
            "experiment": sc.model_dump(mode="json", by_alias=True),
            "phases": {k: [rounded(v[0]), rounded(v[1])] for k, v in self.phase_times.items()},
            "fault_windows": self.windows,
            "steady_states": steady,
            "run": self.run_log,
            "rollbacks": self.rollback_log,
            "cleanup_problems": self.cleanup_problems,
            "load": {"arrivals": len(records) + load.skipped, "sent": len(records), "skipped": load.skipped,
                     "completed": len(done), "hung": sum(r.hung for r in records),
                     "by_status": status_counts(records), "streams": sum(r.stream for r in records),
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
                "p50_ms": rounded(percentile(lat, 50), 1), "p99_ms": rounded(percentile(lat, 99), 1),
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
        await asyncio.to_thread(self.out_dir.mkdir, parents=True, exist_ok=True)
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
        journal_text = json.dumps(self.journal, indent=2, default=str)
        report_text = render_report(self.journal)
        # Off the event loop: the drill's own probes may still be polling when it writes.
        await asyncio.to_thread(Path(paths["journal"]).write_text, journal_text, encoding="utf-8")
        await asyncio.to_thread(Path(paths["report"]).write_text, report_text, encoding="utf-8")
        return paths


async def _close_all(controls: Controls, session: aiohttp.ClientSession, load: LoadGenerator) -> None:
    try:
        await controls.close()
    finally:
        try:
            await load.close()
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
    out: dict[str, Any] = {"i": r.i, "t": round(r.t, 3), "ms": rounded(r.latency_ms, 1), "status": r.status,
                           "mode": r.mode, "degraded": r.degraded,
                           "degradations": [f"{d.get('component')}:{d.get('reason')}" for d in r.degradations]}
    if r.stream:
        out["stream"] = True
    if r.discarded:
        out["discard"] = True
    if r.kb_version:
        out["kb"] = r.kb_version
    if r.error:
        out["error"] = r.error
    return out


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


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
        during = [r for r in j.get("requests", []) if in_spans(r["t"], spans)]
        p99 = percentile([r["ms"] for r in during if r["ms"] is not None and r.get("error") != "hung"], 99)
        answers = [r for r in during if r["status"] == 200 and not r.get("error")]
        modes = Counter(r["mode"] for r in answers)
        avail = [p["value"] for phase in ("before", "during", "after")
                 for p in ((j["steady_states"].get(phase) or {}).get("probes") or [])
                 if p["type"] == "availability" and p["value"] is not None]
        rows.append({"scenario": j["scenario"], "title": j["title"], "verdict": j["verdict"], "status": j["status"],
                     "deviated": j["deviated"], "failed_probes": failed, "requests": j["load"]["sent"],
                     "hung": j["load"]["hung"], "min_availability": min(avail) if avail else None,
                     "p99_during_ms": rounded(p99, 1), "duration_s": j["duration_s"], "error": j.get("error"),
                     "degraded_during": rounded(sum(bool(r["degraded"]) for r in answers) / len(answers), 3)
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


__all__ = ["Controls", "DEFAULT_PROXIES", "STUB_ALIASES", "Drill", "DrillError", "DrillTarget", "LoadGenerator", "RequestRecord",
           "percentile", "run_scenario", "summarize", "write_summary"]
