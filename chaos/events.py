"""Drill start/end markers as DogStatsD events, so a Datadog dashboard shows when a drill ran.

The drill's process sends them to the Agent named by ``--dogstatsd udp://host:port`` (or the usual
``DD_DOGSTATSD_URL`` / ``DD_AGENT_HOST`` + ``DD_DOGSTATSD_PORT``); tags: ``source:rag-sidecar-drill``,
``scenario:<id>``, ``env`` (``DD_ENV``) and, on the end event, ``verdict:<pass|deviated|failed|aborted>``.
Overlay them on a graph with the event query ``tags:source:rag-sidecar-drill``. No Agent listening:
the datagrams are dropped, the drill goes on.
"""
from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlparse

SOURCE_TAG = "source:rag-sidecar-drill"


def dogstatsd_url(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The Agent to send drill events to: ``explicit``, else the Datadog environment variables, else None."""
    if explicit:
        return explicit
    if environ.get("DD_DOGSTATSD_URL"):
        return environ["DD_DOGSTATSD_URL"]
    if environ.get("DD_AGENT_HOST"):
        return f"udp://{environ['DD_AGENT_HOST']}:{environ.get('DD_DOGSTATSD_PORT', '8125')}"
    return None


class DrillEvents:
    """Posts one event when a drill starts and one when it ends (``url`` None: does nothing)."""

    def __init__(self, url: str | None, *, env: str | None = None) -> None:
        self.statsd: Any = None
        self.env = env if env is not None else os.environ.get("DD_ENV")
        if not url:
            return
        from datadog.dogstatsd.base import DogStatsd

        parsed = urlparse(url)
        if parsed.scheme.startswith("unix"):
            self.statsd = DogStatsd(socket_path=url, disable_buffering=True, socket_timeout=0)
        else:
            self.statsd = DogStatsd(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8125,
                                    disable_buffering=True, socket_timeout=0)

    def _tags(self, scenario: str, *extra: str) -> list[str]:
        tags = [SOURCE_TAG, f"scenario:{scenario}", *extra]
        return tags + ([f"env:{self.env}"] if self.env else [])

    def started(self, scenario: str, title: str, targets: list[str]) -> None:
        if self.statsd is not None:
            self.statsd.event(f"Chaos drill started: {title}", f"Faults on {', '.join(targets)} ({scenario}).",
                              alert_type="info", aggregation_key=f"drill-{scenario}",
                              source_type_name="rag-sidecar", tags=self._tags(scenario))

    def ended(self, scenario: str, title: str, verdict: str, detail: str = "") -> None:
        if self.statsd is not None:
            alert = "success" if verdict == "pass" else "warning" if verdict == "deviated" else "error"
            self.statsd.event(f"Chaos drill ended: {title} — {verdict}", detail or verdict, alert_type=alert,
                              aggregation_key=f"drill-{scenario}", source_type_name="rag-sidecar",
                              tags=self._tags(scenario, f"verdict:{verdict}"))

    def close(self) -> None:
        if self.statsd is not None:
            self.statsd.close_socket()
