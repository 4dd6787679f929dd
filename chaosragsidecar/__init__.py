"""Chaos Toolkit extension for rag-sidecar: our drills as Chaos Toolkit activities.

    rag-sidecar chaos export vector_db_blackhole --out experiments/     # → experiments/vector_db_blackhole.json
    chaos validate experiments/vector_db_blackhole.json
    RAG_SIDECAR_URL=http://127.0.0.1:8080 TOXIPROXY_URL=http://127.0.0.1:8474 \\
    RAG_SIDECAR_ADMIN_TOKEN=... chaos run experiments/vector_db_blackhole.json

An exported experiment's method is one action, :func:`chaosragsidecar.actions.run_drill`: the whole
drill of the scenario (load, faults, per-phase probes) as ``rag-sidecar chaos run`` does it; its
steady-state hypothesis is :func:`~chaosragsidecar.probes.gateway_ready` and
:func:`~chaosragsidecar.probes.no_drill_deviated` (true before the method; after it, true only when
the drill passed), so ``chaos run`` reports *deviated* exactly when the drill did; its rollbacks are
the scenario's own (:func:`~chaosragsidecar.actions.rollback`). Addresses come from the experiment's
``configuration`` (environment variables), the admin token from ``$RAG_SIDECAR_ADMIN_TOKEN``.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
