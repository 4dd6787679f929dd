"""What a job queue backend keeps, and the operations the routes and the worker need.

Two backends implement :class:`JobStore`: :mod:`gateway.jobs.sqlite_store` (embedded, default) and
:mod:`gateway.jobs.redis_store` (Redis Streams, shared by replicas). Both give:

* **at-least-once execution** — a claimed query is leased for ``visibility_timeout_s``; a lease
  that runs out (its worker died) makes the query claimable again;
* **exactly-once results** — a result is keyed by (job id, item index) and only the first write
  counts, so a duplicate execution never adds or changes a result;
* **progress counters** updated in the same atomic step as the result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

JOB_STATUSES = ("queued", "running", "completed", "cancelled")
ITEM_STATUSES = ("pending", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"completed", "cancelled"})


@dataclass
class Job:
    id: str
    client: str
    total: int
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # accept_degraded, webhook_url, client
    webhook_status: str = "none"  # none | pending | delivered | failed
    webhook_attempts: int = 0

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.cancelled)

    def view(self) -> dict[str, Any]:
        """The job as the API shows it (without results)."""
        out: dict[str, Any] = {
            "id": self.id, "object": "job", "status": self.status,
            "created_at": round(self.created_at, 3),
            "finished_at": round(self.finished_at, 3) if self.finished_at else None,
            "progress": {"total": self.total, "done": self.done, "failed": self.failed,
                         "cancelled": self.cancelled, "pending": self.pending},
            "accept_degraded": self.options.get("accept_degraded"),
        }
        if self.options.get("webhook_url"):
            out["webhook"] = {"url": self.options["webhook_url"], "status": self.webhook_status,
                              "attempts": self.webhook_attempts}
        return out


@dataclass
class Claim:
    """One query leased to a worker. ``attempts`` counts this attempt; ``token`` is backend-specific."""

    job_id: str
    index: int
    attempts: int
    payload: dict[str, Any]
    first_attempt_at: float
    options: dict[str, Any]
    token: str = ""


class QuotaExceeded(Exception):
    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(f"{pending} queries of this client are unfinished; the limit is {limit}")
        self.pending, self.limit = pending, limit


class JobStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def create(self, job: Job, payloads: list[dict[str, Any]], *, max_pending_per_client: int,
                     idempotency_key: str | None = None) -> Job:
        """Store a new job and queue its items; returns the stored job (an earlier one for a repeated
        ``idempotency_key`` of the same client). Raises :class:`QuotaExceeded`."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def items(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """Items ``offset … offset+limit-1`` in index order: ``{index, status, attempts, result?, error?}``."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel every unfinished item (finished results stay). Idempotent; None if unknown."""
        ...

    async def claim(self, n: int, *, block_s: float = 0.0) -> list[Claim]:
        """Lease up to ``n`` runnable items (due, or whose lease ran out); may wait ``block_s``."""
        ...

    async def complete(self, claim: Claim, status: str, record: dict[str, Any]) -> tuple[bool, bool]:
        """Record the item's outcome (``done``/``failed``) once. Returns (recorded, job_finished):
        ``recorded`` is False when a result was already there (a duplicate execution) or the job was
        cancelled; ``job_finished`` is True for the one write that finished the job."""
        ...

    async def retry(self, claim: Claim, delay_s: float, error: dict[str, Any]) -> None:
        """Give the item back, runnable again in ``delay_s`` seconds."""
        ...

    async def stats(self) -> dict[str, float]:
        """``depth`` (runnable or waiting items), ``in_flight`` (leased), ``oldest_age_s``."""
        ...

    async def due_webhooks(self, n: int, lease_s: float) -> list[Job]:
        """Finished jobs whose webhook is due, each leased for ``lease_s`` (one deliverer at a time)."""
        ...

    async def webhook_outcome(self, job_id: str, status: str, attempts: int, retry_in_s: float | None) -> None:
        """``status`` delivered | failed | pending (then due again in ``retry_in_s``)."""
        ...

    async def cleanup(self) -> int:
        """Delete finished jobs older than their TTL; returns how many."""
        ...
