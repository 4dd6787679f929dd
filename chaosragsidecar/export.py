"""A rag-sidecar scenario as a Chaos Toolkit experiment (``rag-sidecar chaos export``)."""
from __future__ import annotations

from typing import Any

from chaos.scenario import Scenario

CONFIGURATION = {
    "rag_sidecar_url": {"type": "env", "key": "RAG_SIDECAR_URL", "default": "http://127.0.0.1:8080"},
    "toxiproxy_url": {"type": "env", "key": "TOXIPROXY_URL", "default": ""},
    "rag_sidecar_stubs": {"type": "env", "key": "RAG_SIDECAR_STUBS", "default": ""},
    "rag_sidecar_journal_dir": {"type": "env", "key": "RAG_SIDECAR_JOURNAL_DIR", "default": ""},
}


def _provider(module: str, func: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "python", "module": f"chaosragsidecar.{module}", "func": func, "arguments": arguments}


def to_experiment(scenario: Scenario, *, reference: str | None = None) -> dict[str, Any]:
    """The Chaos Toolkit experiment (a JSON-able dict) that runs ``scenario``'s drill.

    ``reference``: how the experiment names the scenario (default its id, resolved in chaos/scenarios/;
    pass a path for a scenario of your own)."""
    ref = reference or scenario.id
    where = {"url": "${rag_sidecar_url}", "toxiproxy": "${toxiproxy_url}", "stubs": "${rag_sidecar_stubs}"}
    hypothesis = scenario.steady_state_hypothesis
    return {
        "version": "1.0.0",
        "title": scenario.title,
        "description": (scenario.description or scenario.title).strip(),
        "tags": ["rag-sidecar", *scenario.tags],
        "contributions": {"reliability": "high", "availability": "high"},
        "configuration": CONFIGURATION,
        "steady-state-hypothesis": {
            "title": hypothesis.title,
            "probes": [
                {"type": "probe", "name": "the gateway is ready", "tolerance": True,
                 "provider": _provider("probes", "gateway_ready", {"url": "${rag_sidecar_url}"})},
                {"type": "probe", "name": "no drill deviated (its probes: " +
                 ", ".join(p.name for p in hypothesis.probes) + ")", "tolerance": True,
                 "provider": _provider("probes", "no_drill_deviated", {})},
            ],
        },
        "method": [
            {"type": "action", "name": f"drill {scenario.id}: " + "; ".join(a.label for a in scenario.method),
             "provider": _provider("actions", "run_drill",
                                   {"scenario": ref, **where, "journal_dir": "${rag_sidecar_journal_dir}"})},
        ],
        "rollbacks": [
            {"type": "action", "name": f"rollbacks of {scenario.id}",
             "provider": _provider("actions", "rollback", {"scenario": ref, **where})},
        ] if scenario.rollbacks else [],
    }
