"""The serving process's garbage-collector policy: the loaded KB is moved out of the collector's way.

A loaded KB is a few hundred thousand long-lived Python objects (chunks, the keyword index, the config),
and CPython's full collection walks every one of them. Under load the in-flight requests' objects are
promoted to the oldest generation fast enough that a full collection runs every few seconds: measured on the
sample corpus (240k objects) at 32 concurrent /v1/messages streams, two full collections of ~125 ms each in
5 s, about 14 µs of CPU per request, and a 125 ms stall for every request in flight. A larger KB stalls
longer.

:func:`settle` does what Instagram's and gunicorn's preloading servers do: one full collection, then
``gc.freeze()``, which moves every surviving object to the permanent generation that collections skip (the
objects are still freed by reference counting; only their cycles wait for the next settle). It runs when
the first KB is in place, before the process reports ready (start-up traffic never meets the pause), and
again after each KB swap, where ``gc.unfreeze()`` first hands the previous KB back to the collector so the
old version's cycles are freed rather than kept forever. A version still used by requests in flight at the
swap is freed by reference counting when they finish; cycles of it would wait for the next swap.

The young generation is collected when the count of live container objects has grown by
``server.gc_gen0_threshold`` since the last collection. CPython's 700 is less than what 32 concurrent
requests hold in flight, so under load it collected every few requests, each time walking every in-flight
object: measured at SSE c = 32 on the same bench, 794 young collections in 5 s (122 ms, ~7 µs per request);
at 7000, none (what requests allocate they free again; cycles still go within 7000 objects).

Process-wide, so only a serving process turns it on (:func:`enable`, from ``rag-sidecar serve`` and the
bench's gateway process, per ``server.gc_freeze``); an app embedded elsewhere (the tests start hundreds
in one process) leaves the host's collector alone.
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("rag_sidecar.app")

_enabled = False


def enable(on: bool = True, gen0_threshold: int | None = None) -> None:
    """Let :func:`settle` act in this process (``server.gc_freeze``); ``gen0_threshold``: how many more
    container objects may be alive than at the last collection before the young generation is collected
    (``server.gc_gen0_threshold``; None leaves CPython's 700)."""
    global _enabled
    _enabled = on
    if gen0_threshold is not None:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


def enabled() -> bool:
    return _enabled


def settle(reason: str) -> dict[str, Any] | None:
    """When enabled: give frozen objects back to the collector, collect everything, freeze what survives.
    Blocks the event loop for one full collection (logged as ``heap_frozen`` with ``pause_ms``); returns
    that record, or None when disabled."""
    if not _enabled:
        return None
    t0 = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    record = {"event": "heap_frozen", "reason": reason, "objects": gc.get_freeze_count(),
              "collected": collected, "pause_ms": round((time.perf_counter() - t0) * 1e3, 1),
              "gen0_threshold": gc.get_threshold()[0]}
    log.info("heap frozen", extra=record)
    return record
