"""Serving until a signal, then a graceful shutdown that honours ``server.shutdown_grace_s`` exactly.

aiohttp's own sequence (``run_app``) waits the grace for in-flight handlers, then waits it *again* for
the cancelled ones (and rounds timeouts over 5 s up to whole seconds), so requests were cut at about
twice the grace, and a cut request's ``CancelledError`` looked like a client that went away (499).

Here, like Envoy's drain: on SIGTERM/SIGINT the listener closes at once (new connections are refused),
idle keep-alive connections are closed, a request arriving on a busy connection gets a 503
``shutting_down``; in-flight requests get the grace to finish; at the end of the grace the rest are
cancelled with a marker, answered 503 (``Retry-After``, ``Connection: close``) when nothing was sent
yet, logged and counted as 503 — a server-side outcome, not the client's.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from aiohttp import web

from gateway.drain import Drain
from gateway.errors import error_response
from gateway.state import STARTED_RESPONSE, STATE
from resilience.waits import wait_event

log = logging.getLogger("rag_sidecar.shutdown")
CUT_FLUSH_S = 1.0  # after the grace: time for the cut requests' 503s to be written, then connections close


@web.middleware
async def drain(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Track in-flight requests; refuse new ones while draining; answer 503 for those cut at the end of
    the grace (the access log above this middleware then logs and counts a 503)."""
    d: Drain = request.app[STATE].drain
    if d.draining:
        return error_response(503, "shutting_down", "the gateway is shutting down; retry on another replica",
                              headers={"Retry-After": "1", "Connection": "close"})
    task = asyncio.current_task()
    assert task is not None
    d.enter(task)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not d.was_cut(task):
            raise
        started = request.get(STARTED_RESPONSE)
        if started is not None and started.prepared:
            raise  # part of the answer is out: the connection is broken, the access log says 503
        task.uncancel()
        return error_response(
            503, "shutting_down",
            f"the gateway shut down before this request finished (grace {d.grace_s:g} s); retry",
            headers={"Retry-After": "1", "Connection": "close"})
    finally:
        d.leave(task)


async def serve(app: web.Application, host: str, port: int, grace_s: float, *, reuse_port: bool = False,
                path: str | None = None) -> None:
    """Serve ``app`` on ``host:port`` (and the unix socket ``path``, if given) until SIGTERM/SIGINT, then
    drain for exactly ``grace_s`` seconds. ``reuse_port``: SO_REUSEPORT (``serve --workers``)."""
    # aiohttp ≥ 3.9 no longer cancels a handler whose client went away (handler_cancellation defaults to
    # False): without it, a disconnected client's upstream calls would run on to their timeouts.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=CUT_FLUSH_S)
    await runner.setup()
    sites: list[web.BaseSite] = [web.TCPSite(runner, host, port, reuse_port=reuse_port or None)]
    if path is not None:
        sites.append(web.UnixSite(runner, path))
    for site in sites:
        await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await drain_and_stop(app, runner, sites, grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def drain_and_stop(app: web.Application, runner: web.AppRunner, sites: list[web.BaseSite],
                         grace_s: float) -> None:
    """Stop accepting, let in-flight requests finish within ``grace_s``, cut the rest with a 503."""
    d: Drain = app[STATE].drain
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d.draining, d.grace_s = True, grace_s
    for site in sites:
        await site.stop()  # closes the listening socket: new connections are refused from now on
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after their response
    in_flight = len(d.tasks)
    log.warning("shutting down", extra={"event": "shutdown_started", "in_flight": in_flight, "grace_s": grace_s})
    cut = 0
    if not await wait_event(d.idle, grace_s):
        cut = d.cut()
        log.error("shutdown grace expired; in-flight requests cut with 503",
                  extra={"event": "shutdown_cut", "cut": cut, "grace_s": grace_s,
                         "after_s": round(loop.time() - t0, 3)})
        await wait_event(d.idle, CUT_FLUSH_S)
    log.warning("drained", extra={"event": "shutdown_drained", "in_flight": in_flight, "cut": cut,
                                  "after_s": round(loop.time() - t0, 3)})
