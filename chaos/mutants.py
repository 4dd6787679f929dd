"""The drills' own mutation test: disable one resilience mechanism at a time, re-run the drills that
should notice, and show that at least one fails. A mechanism no drill misses is unproven.

    rag-sidecar chaos run --mutants            (or: make drill-mutants)

Each mutant is a config change of the local stack's gateway (nothing is patched in the code): a
breaker that never opens, a stage timeout longer than any request, a fallback switched off. For each,
a fresh :class:`~chaos.local.LocalStack` is brought up and the mutant's scenarios drilled; the
mutant is *killed* when one of them does not pass. The table (``docs/chaos.md``, between the
``mutation-table`` markers) is rewritten from the run with ``--write-doc``.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chaos.drill import Drill
from chaos.local import PRIMARY_MODEL, LocalStack
from chaos.scenario import load_scenario

DOC = Path(__file__).resolve().parent.parent / "docs" / "chaos.md"
DOC_MARKERS = ("<!-- mutation-table:start -->\n", "<!-- mutation-table:end -->")
# A breaker that never opens: no consecutive-failure count, no failure/slow rate ever judged.
NEVER_OPENS = {"failure_threshold": 1_000_000, "min_calls": 1_000_000, "window": 20}


@dataclass(frozen=True)
class Mutant:
    name: str
    mechanism: str
    overrides: dict[str, Any]
    scenarios: tuple[str, ...]
    # Why no drill can kill this mutant today (a known gap, listed in the table and in docs/chaos.md):
    # it does not fail the run, and it fails it once a drill kills it (remove the reason then).
    survives: str | None = None

    def describe(self) -> str:
        return json.dumps(self.overrides, separators=(",", ":"))


def _breaker_off(guard: str) -> dict[str, Any]:
    return {"resilience": {guard: {"breaker": NEVER_OPENS}}}


def _timeout_off(guard: str) -> dict[str, Any]:
    # Longer than any request budget: only the request deadline is left to end a hung call.
    return {"resilience": {guard: {"timeout_s": 3600.0}}}


MUTANTS: tuple[Mutant, ...] = (
    Mutant("breaker:vector_db", "vector DB circuit breaker", _breaker_off("vector_db"), ("vector_db_blackhole",)),
    Mutant("breaker:embedder", "embedder circuit breaker", _breaker_off("embedder"), ("embedder_down",)),
    Mutant("breaker:llm", "LLM circuit breakers", _breaker_off("llm"), ("llm_hang", "llm_overloaded_storm")),
    Mutant("timeout:vector_db", "vector DB stage timeout", _timeout_off("vector_db"), ("vector_db_blackhole",)),
    Mutant("timeout:embedder", "embedder stage timeout", _timeout_off("embedder"), ("embedder_hang",)),
    Mutant("timeout:llm", "LLM stage timeout", _timeout_off("llm"), ("llm_hang",)),
    Mutant("fallback:keyword_index", "keyword (BM25) retrieval fallback", {"fallback": {"keyword_index": False}},
           ("vector_db_blackhole",)),
    Mutant("fallback:fallback_model", "fallback LLM model", {"llm": {"fallback_model": None}},
           ("llm_rate_limited",)),
    Mutant("fallback:answer_cache", "stale cached answers (answer cache)", {"cache": {"enabled": False}},
           ("llm_down_stale_answers",)),
    Mutant("fallback:extractive", "extractive answer (no model and no cached answer)",
           {"fallback": {"extractive": False}}, ("llm_and_vector_db_down",)),
    # /v1/messages: the primary model's own chain emptied (what an operator sets to stop failing over).
    Mutant("failover:messages", "/v1/messages failover to the next model (stream cut before content, 529)",
           {"llm": {"fallbacks": {PRIMARY_MODEL: []}}}, ("messages_stream_cut", "messages_529_storm")),
    # No config turns these off (no operator would): the limit is set beyond anything a drill can reach.
    Mutant("bulkhead:llm", "LLM bulkhead (calls in flight per model)",
           {"resilience": {"llm": {"bulkhead": {"max_concurrent": 100_000, "max_queue": 100_000}}}},
           ("llm_brownout",)),
    Mutant("retry_budget:llm", "LLM retry budget (retries ≤ 20 % of calls)",
           {"resilience": {"llm": {"retry": {"budget_ratio": 1.0, "budget_min_per_s": 1_000_000.0}}}},
           ("llm_overloaded_storm",),
           survives="the breaker opens first: a failure rate the budget caps (> 20 %) also trips the breaker "
                    "(5 in a row, or 50 % of 20), which stops retries itself"),
    Mutant("header_timeout:server", "slow-header connections closed after server.header_timeout_s",
           {"server": {"header_timeout_s": 3600.0}}, ("slow_clients",)),
    Mutant("rate_limit:clients", "per-client rate limit (one client cannot take the gateway)",
           {"rate_limit": {"enabled": False}}, ("noisy_client",)),
    # Redis is on the request path of the answer cache (the breakers' shared state is not: background tasks
    # only, nothing to switch): a slow Redis must cost a request at most this budget.
    Mutant("redis_budget:cache", "answer cache falls back to its local copy when Redis is slow (cache.redis_timeout_s)",
           {"cache": {"redis_timeout_s": 30.0}}, ("redis_slow",)),
    Mutant("half_open:vector_db", "half-open permits (a recovering vector DB gets trial calls, not the traffic)",
           {"resilience": {"vector_db": {"breaker": {"half_open_permits": 100_000}}}}, ("vector_db_stays_down",)),
)


def _failed(journal: dict[str, Any]) -> list[str]:
    """``phase:name (measured vs limit)`` of every probe that was not met."""
    out = []
    for phase in ("before", "during", "after"):
        for p in (journal["steady_states"].get(phase) or {}).get("probes") or []:
            if not p["met"]:
                value = "no data" if p["value"] is None else f"{p['value']:g}"
                limit = "" if p["limit"] is None else f" vs {p['limit']:g}"
                out.append(f"{phase}:{p['name']} ({value}{limit})")
    return out


async def run_mutant(mutant: Mutant, *, workdir: Path, say: Callable[[str], None] = print,
                     out_dir: Path | None = None) -> dict[str, Any]:
    """Bring up a stack with the mutant, drill its scenarios; ``killed`` when one of them did not pass.
    With ``out_dir``, each drill's journal and report go to ``out_dir/<scenario>/``."""
    t0 = time.monotonic()
    # Redis for the drills that break it (the shared state of breakers, rate limits and the answer cache).
    redis = any("shared_state" in load_scenario(name).target for name in mutant.scenarios)
    stack = LocalStack(workdir, overrides=mutant.overrides, say=say, redis=redis)
    results = []
    try:
        await stack.start()
        for name in mutant.scenarios:
            await stack.reset()
            journal = await Drill(load_scenario(name, stack.variables()), stack.target(),
                                  out_dir=None if out_dir is None else out_dir / name,
                                  png=False, on_event=lambda _msg: None).run()
            failed = _failed(journal)
            results.append({"scenario": name, "verdict": journal["verdict"], "failed_probes": failed,
                            "aborted_by_safeguard": journal.get("aborted_by_safeguard") is not None})
            say(f"mutant {mutant.name}: {name} → {journal['verdict']} {failed[:4]}")
    finally:
        await stack.stop()
    killed = any(r["verdict"] != "pass" for r in results)
    return {"mutant": mutant.name, "mechanism": mutant.mechanism, "config": mutant.describe(), "killed": killed,
            "survives": mutant.survives, "drills": results, "seconds": round(time.monotonic() - t0, 1)}


async def run_all(names: list[str] | None = None, *, say: Callable[[str], None] = print,
                  out_dir: Path | None = None) -> list[dict[str, Any]]:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    unknown = sorted(set(names or ()) - {m.name for m in MUTANTS})
    if unknown:
        raise SystemExit(f"unknown mutant(s) {unknown}; known: {[m.name for m in MUTANTS]}")
    out = []
    for mutant in chosen:
        workdir = Path(tempfile.mkdtemp(prefix="rag-sidecar-mutant-"))
        try:
            journals = None if out_dir is None else out_dir / mutant.name.replace(":", "-")
            out.append(await run_mutant(mutant, workdir=workdir, say=say, out_dir=journals))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| mechanism disabled | config of the mutant | drill | verdict | probes that failed (measured vs limit) "
             "| killed | s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for d in r["drills"]:
            probes = ", ".join(d["failed_probes"][:4]) + (" …" if len(d["failed_probes"]) > 4 else "")
            if d["aborted_by_safeguard"]:
                probes = "aborted_by_safeguard; " + probes
            lines.append(f"| {r['mechanism']} (`{r['mutant']}`) | `{r['config']}` | {d['scenario']} | "
                         f"{d['verdict']} | {probes or '—'} | {_killed(r)} | "
                         f"{r.get('seconds', '')} |")
    return "\n".join(lines) + "\n"


def _killed(result: dict[str, Any]) -> str:
    if result["killed"]:
        return "yes" + (" (**listed as a survivor: remove `survives`**)" if result.get("survives") else "")
    return "**SURVIVED**" + (f" (known: {result['survives']})" if result.get("survives") else "")


def ok(result: dict[str, Any]) -> bool:
    """Killed, or a known survivor that still survives."""
    return bool(result["killed"]) != bool(result.get("survives"))


def write_doc(results: list[dict[str, Any]], path: Path = DOC) -> None:
    start, end = DOC_MARKERS
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + start + table(results) + end + tail, encoding="utf-8")


def main_sync(names: list[str] | None, *, write: bool, out: Path | None) -> int:
    results = asyncio.run(run_all(names, out_dir=None if out is None else out.parent))
    print(table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if write:
        write_doc(results)
    return 0 if all(ok(r) for r in results) else 1
