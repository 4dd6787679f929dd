"""Chaos Toolkit actions (python provider, module ``chaosragsidecar.actions``)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from chaosragsidecar import state

__all__ = ["run_drill", "rollback"]


def _target(url: str, toxiproxy: str | None, stubs: str | None, admin_token: str | None) -> Any:
    from chaos.drill import STUB_ALIASES, DrillTarget
    from chaos.events import dogstatsd_url

    stub_urls = {}
    for pair in filter(None, (p.strip() for p in (stubs or "").split(","))):
        name, _, stub_url = pair.partition("=")
        stub_urls[STUB_ALIASES.get(name, name)] = stub_url
    return DrillTarget(url=url, toxiproxy=toxiproxy or None, stubs=stub_urls, admin_token=admin_token or None,
                       dogstatsd=dogstatsd_url())


def run_drill(scenario: str, url: str, toxiproxy: str = "", stubs: str = "", variables: dict[str, Any] | None = None,
              journal_dir: str = "") -> dict[str, Any]:
    """Run the rag-sidecar drill ``scenario`` (a name in chaos/scenarios/ or a YAML path) against the
    gateway at ``url``: load, faults, probes, rollbacks. ``stubs``: ``"vector_db=http://…,llm=http://…"``
    (stand-ins for stub_* actions and attempt counters); the gateway's admin token comes from
    ``$RAG_SIDECAR_ADMIN_TOKEN`` (never an experiment argument: journals record those). Returns the drill's
    summary (``verdict``, ``failed_probes``, ``journal``); the verdict also decides
    :func:`chaosragsidecar.probes.no_drill_deviated`."""
    from chaos.drill import Drill
    from chaos.scenario import load_scenario

    target = _target(url, toxiproxy, stubs, os.environ.get("RAG_SIDECAR_ADMIN_TOKEN"))
    sc = load_scenario(scenario, variables or {})
    out_dir = Path(journal_dir) / sc.id if journal_dir else None
    journal = asyncio.run(Drill(sc, target, out_dir=out_dir, png=False).run())
    failed = [f"{phase}:{p['name']}" for phase in ("before", "during", "after")
              for p in ((journal["steady_states"].get(phase) or {}).get("probes") or []) if not p["met"]]
    summary = {"scenario": sc.id, "verdict": journal["verdict"], "status": journal["status"], "failed_probes": failed,
               "aborted_by_safeguard": journal.get("aborted_by_safeguard"),
               "journal": str(out_dir / "journal.json") if out_dir else None}
    state.LAST = summary
    return summary


def rollback(scenario: str, url: str, toxiproxy: str = "", stubs: str = "", variables: dict[str, Any] | None = None,
) -> list[str]:
    """Apply the scenario's rollbacks (the drill already ran them; this makes ``chaos run --rollback-strategy
    always`` safe after an interrupted run). Returns the names of the rollbacks applied."""
    import aiohttp

    from chaos.controls import Controls
    from chaos.scenario import load_scenario

    target = _target(url, toxiproxy, stubs, os.environ.get("RAG_SIDECAR_ADMIN_TOKEN"))
    sc = load_scenario(scenario, variables or {})

    async def apply_all() -> list[str]:
        done = []
        async with aiohttp.ClientSession() as session:
            controls = Controls(target, session)
            try:
                for rb in sc.rollbacks:
                    await controls.apply(rb)
                    done.append(rb.name or f"{rb.action} {rb.target}")
            finally:
                await controls.close()
        return done

    return asyncio.run(apply_all())
