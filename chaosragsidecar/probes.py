"""Chaos Toolkit probes (python provider, module ``chaosragsidecar.probes``)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from chaosragsidecar import state

__all__ = ["gateway_ready", "no_drill_deviated", "last_drill"]


def gateway_ready(url: str, timeout_s: float = 5.0) -> bool:
    """``GET {url}/readyz`` answers 200 (the gateway is up and its KB loaded)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=timeout_s) as resp:  # noqa: S310 - operator URL
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def no_drill_deviated() -> bool:
    """True unless a drill run by :func:`chaosragsidecar.actions.run_drill` in this process did not pass
    (before the method no drill has run: true)."""
    last = state.LAST
    return last is None or last.get("verdict") == "pass"


def last_drill() -> dict[str, Any]:
    """The last drill's summary (verdict, failed probes, journal path); ``{}`` before any."""
    return json.loads(json.dumps(state.LAST or {}))
