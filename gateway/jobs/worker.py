"""The job worker: claims queued queries, runs them through the pipeline at background priority,
records each outcome once, retries transient failures with backoff, delivers completion webhooks,
and deletes expired jobs.

Priority: at most ``jobs.concurrency`` queries run at once per replica, and each runs under
:func:`resilience.background_priority`, so every dependency's bulkhead gives it at most
``background_share`` of its slots and serves waiting interactive calls first.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable

import aiohttp

from gateway import lifecycle
from gateway.jobs.store import Claim, Job, JobStore
from gateway.jobs.webhook import ATTEMPT_HEADER, SIGNATURE_HEADER, WEBHOOK_ID_HEADER, backoff_s, event_body, sign
from gateway.upstreams.fair import current_client
from resilience import Deadline, IdleGate, background_priority
from resilience.waits import wait_event

if TYPE_CHECKING:
    from gateway.config import JobsConfig
    from gateway.pipeline import Pipeline
    from gateway.telemetry import Telemetry

log = logging.getLogger("rag_sidecar.jobs")
# Degradations worth retrying when degraded answers are not accepted: the dependency may recover.
TRANSIENT_REASONS = frozenset({"breaker_open", "timeout", "rate_limited", "shed", "overloaded", "error"})
WEBHOOK_POLL_S = 0.5
CLEANUP_EVERY_S = 60.0
STATS_EVERY_S = 2.0


def transient_degradations(contract: dict[str, Any]) -> list[str]:
    return [f"{d['component']}:{d['reason']}" for d in contract.get("degradations", [])
            if d.get("reason") in TRANSIENT_REASONS]


class JobWorker:
    """Runs the loops of one replica; :meth:`start` after the store is open, :meth:`stop` before closing it."""

    def __init__(self, store: JobStore, config: "JobsConfig", *, pipeline: Callable[[], "Pipeline | None"],
                 ready: asyncio.Event, telemetry: "Telemetry", block_s: float = 0.0) -> None:
        self.store = store
        self.config = config
        self._pipeline = pipeline
        self._ready = ready
        self.telemetry = telemetry
        self.block_s = block_s  # backends that can wait for work server-side (Redis) block in claim()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: dict[asyncio.Task[Any], Claim] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.executed = 0  # attempts run by this replica (tests and logs)
        # Interactive requests in flight (the access-log middleware counts them); our own job-status
        # polls count too, which only makes the batch more polite.
        self.gate = IdleGate(lambda: telemetry.in_flight, max_wait_s=config.yield_max_wait_s) \
            if config.yield_to_interactive else None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._claim_loop(), name="jobs-claim"),
                       asyncio.create_task(self._webhook_loop(), name="jobs-webhooks"),
                       asyncio.create_task(self._housekeeping(), name="jobs-housekeeping")]

    def wake(self) -> None:
        """New work was queued here: look now instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        running = dict(self._running)
        await lifecycle.stop_tasks("job worker", [*self._tasks, *running])
        # Give interrupted queries back at once (a rolling restart must not park them for a whole
        # visibility timeout); a query whose outcome was recorded is not touched by retry().
        for claim in running.values():
            try:
                await asyncio.wait_for(self.store.retry(claim, 0.0, {"type": "interrupted",
                                                                      "message": "the worker stopped"}), 2.0)
            except Exception as exc:  # noqa: BLE001 - the lease runs out and the query runs again anyway
                log.warning("could not give an interrupted job query back", extra={
                    "event": "jobs_give_back_failed", "job_id": claim.job_id, "error": repr(exc)})
        if self._session is not None:
            await self._session.close()

    # ---- queries ----------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            await self._ready.wait()  # not ready (start-up, KB failure): queries stay queued
            await self._slots.acquire()
            free = 1
            while free < self.config.concurrency and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            self._wake.clear()
            try:
                claims = await self.store.claim(free, block_s=self.block_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the queue is unreachable: log, back off, try again
                log.warning("job queue claim failed", extra={"event": "jobs_claim_failed", "error": repr(exc)})
                claims = []
                await asyncio.sleep(min(5.0, self.config.poll_interval_s * 10))
            for _ in range(free - len(claims)):
                self._slots.release()
            for claim in claims:
                task = asyncio.create_task(self._run(claim), name=f"job-{claim.job_id}-{claim.index}")
                self._running[task] = claim
                task.add_done_callback(lambda t: self._running.pop(t, None))
            if not claims:
                await wait_event(self._wake, self.config.poll_interval_s)

    async def _run(self, claim: Claim) -> None:
        try:
            if self.gate is not None:
                await self.gate.wait_turn()
            await self._execute(claim)
        except asyncio.CancelledError:
            raise  # shutting down: the lease runs out and another worker (or our next start) takes it
        except Exception as exc:  # noqa: BLE001 - a store error: the lease expires and the item runs again
            log.error("job item could not be recorded", extra={"event": "jobs_item_error", "job_id": claim.job_id,
                                                                "index": claim.index, "error": repr(exc)})
        finally:
            self._slots.release()

    async def _execute(self, claim: Claim) -> None:
        from gateway.pipeline import LadderExhausted, QueryRequest

        pipeline = self._pipeline()
        assert pipeline is not None
        p = claim.payload
        req = QueryRequest(query=p["query"], top_k=p["top_k"], filters=p.get("filters"),
                           request_id=f"job-{claim.job_id}-{claim.index}")
        accept_degraded = claim.options.get("accept_degraded", self.config.accept_degraded)
        t0 = time.perf_counter()
        self.executed += 1
        # The fair embedder queue sees each client's batch as its own flow: interactive clients (sparse)
        # go first, and two clients' batches share the engine evenly.
        current_client.set(f"job:{claim.options.get('client', claim.job_id)}")
        with background_priority():
            try:
                result = await pipeline.answer(req, Deadline(self.config.item_timeout_s))
            except LadderExhausted as exc:
                trace = exc.trace
                trace.finish()
                error = {"type": "unavailable", "message": "every retrieval path failed",
                         "degradations": trace.degradations}
                if await self._maybe_retry(claim, error, "unavailable"):
                    return
                await self._record(claim, "failed", {"error": error}, "failed", t0)
                return
            except Exception as exc:  # noqa: BLE001 - one query's bug must not stop the batch; recorded
                log.exception("job item raised", extra={"event": "jobs_item_exception", "job_id": claim.job_id,
                                                        "index": claim.index})
                error = {"type": "internal_error", "message": type(exc).__name__}
                if await self._maybe_retry(claim, error, "error"):
                    return
                await self._record(claim, "failed", {"error": error}, "failed", t0)
                return
        contract = result.contract()
        transient = transient_degradations(contract)
        if transient and not accept_degraded:
            error = {"type": "degraded", "message": "answer degraded: " + ", ".join(transient)}
            if await self._maybe_retry(claim, error, "degraded"):
                return
            contract["retries_exhausted"] = True
        outcome = "degraded" if contract["degraded"] else "ok"
        await self._record(claim, "done", {"result": contract}, outcome, t0)

    async def _maybe_retry(self, claim: Claim, error: dict[str, Any], reason: str) -> bool:
        cfg = self.config
        delay = backoff_s(claim.attempts, cfg.backoff_base_s, cfg.backoff_max_s)
        if claim.attempts >= cfg.max_attempts or time.time() + delay > claim.first_attempt_at + cfg.retry_deadline_s:
            return False
        await self.store.retry(claim, delay, error)
        self.telemetry.job_retry(reason)
        return True

    async def _record(self, claim: Claim, status: str, record: dict[str, Any], outcome: str, t0: float) -> None:
        recorded, finished = await self.store.complete(claim, status, record)
        self.telemetry.job_item(outcome if recorded else "duplicate", (time.perf_counter() - t0) * 1e3)
        if finished:
            log.info("job finished", extra={"event": "job_finished", "job_id": claim.job_id})
            self._wake.set()

    # ---- webhooks ---------------------------------------------------------------------------
    async def _webhook_loop(self) -> None:
        while True:
            try:
                jobs = await self.store.due_webhooks(8, lease_s=self.config.webhook_timeout_s * 2 + 5)
                if jobs:
                    await asyncio.gather(*(self._deliver(job) for job in jobs))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next round; the webhook stays pending
                log.warning("webhook round failed", extra={"event": "webhook_round_failed", "error": repr(exc)})
            await asyncio.sleep(WEBHOOK_POLL_S)

    async def _deliver(self, job: Job) -> None:
        cfg = self.config
        url = job.options["webhook_url"]
        attempt = job.webhook_attempts + 1
        secret = cfg.webhook_secret.get_secret_value() if cfg.webhook_secret else ""
        body = event_body({**job.view(), "links": {"self": f"/v1/jobs/{job.id}"}})
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
                   WEBHOOK_ID_HEADER: job.id, ATTEMPT_HEADER: str(attempt), "User-Agent": "rag-sidecar-webhooks"}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        status: int | str
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status = type(exc).__name__
        ok = isinstance(status, int) and 200 <= status < 300
        if ok:
            await self.store.webhook_outcome(job.id, "delivered", attempt, None)
        elif attempt >= cfg.webhook_max_attempts:
            await self.store.webhook_outcome(job.id, "failed", attempt, None)
        else:
            delay = backoff_s(attempt, cfg.webhook_backoff_base_s, cfg.webhook_backoff_max_s)
            await self.store.webhook_outcome(job.id, "pending", attempt, delay)
        outcome = "delivered" if ok else ("failed" if attempt >= cfg.webhook_max_attempts else "retry")
        self.telemetry.job_webhook(outcome)
        log.log(logging.INFO if ok else logging.WARNING, "webhook delivery",
                extra={"event": "job_webhook", "job_id": job.id, "attempt": attempt, "status": status,
                       "outcome": outcome})

    # ---- housekeeping -----------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        last_cleanup = 0.0
        while True:
            try:
                stats = await self.store.stats()
                self.telemetry.job_queue(stats["depth"], stats["in_flight"], stats["oldest_age_s"])
                if time.monotonic() - last_cleanup > CLEANUP_EVERY_S:
                    last_cleanup = time.monotonic()
                    removed = await self.store.cleanup()
                    if removed:
                        log.info("expired jobs deleted", extra={"event": "jobs_expired", "jobs": removed})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - metrics/cleanup only; the next round tries again
                log.warning("job housekeeping failed", extra={"event": "jobs_housekeeping_failed",
                                                              "error": repr(exc)})
            await asyncio.sleep(STATS_EVERY_S * (0.5 + random.random()))
