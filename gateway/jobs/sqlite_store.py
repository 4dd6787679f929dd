"""The embedded job queue: one SQLite file in the data dir (WAL), every call on one worker thread.

Several processes may share the file (``serve --workers N``: claims are single transactions). On
open, leases held by a process of this host that no longer exists (killed -9, OOM-killed) are released
at once instead of waiting out the visibility timeout; other leases expire normally. WAL with
``synchronous=NORMAL``: a committed result survives a process crash (what kill -9 tests); a power
loss may lose the last transactions, which then simply run again (at-least-once).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from gateway.jobs.store import Claim, Job, QuotaExceeded

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, client TEXT NOT NULL, idem_key TEXT, status TEXT NOT NULL,
  created_at REAL NOT NULL, finished_at REAL, expires_at REAL,
  total INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
  cancelled INTEGER NOT NULL DEFAULT 0, options TEXT NOT NULL,
  webhook_status TEXT NOT NULL DEFAULT 'none', webhook_attempts INTEGER NOT NULL DEFAULT 0,
  webhook_next_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(client, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_webhook ON jobs(webhook_next_at) WHERE webhook_status = 'pending';
CREATE TABLE IF NOT EXISTS items (
  job_id TEXT NOT NULL, idx INTEGER NOT NULL, payload TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  available_at REAL NOT NULL, lease_until REAL, lease_owner TEXT, first_attempt_at REAL,
  result TEXT, error TEXT, finished_at REAL,
  PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_runnable ON items(status, available_at);
CREATE INDEX IF NOT EXISTS items_leased ON items(status, lease_until);
"""
_JOB_COLS = ("id, client, status, created_at, finished_at, total, done, failed, cancelled, options, "
             "webhook_status, webhook_attempts")


def _job(row: tuple[Any, ...]) -> Job:
    (id_, client, status, created, finished, total, done, failed, cancelled, options, wh_status, wh_att) = row
    return Job(id=id_, client=client, status=status, created_at=created, finished_at=finished, total=total,
               done=done, failed=failed, cancelled=cancelled, options=json.loads(options),
               webhook_status=wh_status, webhook_attempts=wh_att)


def _dead_local_process(owner: str | None) -> bool:
    """Whether a lease ``owner`` (``host:pid:nonce``) was a process of this host that is gone."""
    host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # our pid, another nonce: an earlier process that had our pid has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class SQLiteJobStore:
    def __init__(self, path: Path, *, visibility_timeout_s: float, result_ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.visibility_timeout_s = visibility_timeout_s
        self.result_ttl_s = result_ttl_s
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "store not open"
            return fn(self._db)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=OFF")
            db.executescript(SCHEMA)
            owners = [r[0] for r in db.execute("SELECT DISTINCT lease_owner FROM items WHERE status='running'")]
            for owner in filter(_dead_local_process, owners):
                db.execute("UPDATE items SET status='pending', lease_owner=NULL, lease_until=NULL "
                           "WHERE status='running' AND lease_owner=?", (owner,))
            self._db = db
        await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._pool.shutdown(wait=True)

    # ---- submission ------------------------------------------------------------------------
    async def create(self, job: Job, payloads: list[dict[str, Any]], *, max_pending_per_client: int,
                     idempotency_key: str | None = None) -> Job:
        def tx(db: sqlite3.Connection) -> Job:
            db.execute("BEGIN IMMEDIATE")
            try:
                if idempotency_key is not None:
                    row = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE client=? AND idem_key=?",
                                     (job.client, idempotency_key)).fetchone()
                    if row is not None:
                        db.execute("COMMIT")
                        return _job(row)
                pending = db.execute(
                    "SELECT COALESCE(SUM(total - done - failed - cancelled), 0) FROM jobs "
                    "WHERE client=? AND status IN ('queued', 'running')", (job.client,)).fetchone()[0]
                if pending + job.total > max_pending_per_client:
                    raise QuotaExceeded(pending, max_pending_per_client)
                db.execute("INSERT INTO jobs (id, client, idem_key, status, created_at, total, options) "
                           "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                           (job.id, job.client, idempotency_key, job.created_at, job.total, json.dumps(job.options)))
                now = self.clock()
                db.executemany("INSERT INTO items (job_id, idx, payload, status, available_at) "
                               "VALUES (?, ?, ?, 'pending', ?)",
                               ((job.id, i, json.dumps(p), now) for i, p in enumerate(payloads)))
                db.execute("COMMIT")
                return job
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(tx)

    async def get(self, job_id: str) -> Job | None:
        row = await self._run(lambda db: db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?",
                                                    (job_id,)).fetchone())
        return _job(row) if row else None

    async def items(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._run(lambda db: db.execute(
            "SELECT idx, status, attempts, result, error FROM items WHERE job_id=? AND idx>=? ORDER BY idx LIMIT ?",
            (job_id, offset, limit)).fetchall())
        out = []
        for idx, status, attempts, result, error in rows:
            item: dict[str, Any] = {"index": idx, "status": status, "attempts": attempts}
            if result is not None:
                item["result"] = json.loads(result)
            if error is not None:
                item["error"] = json.loads(error)
            out.append(item)
        return out

    async def cancel(self, job_id: str) -> Job | None:
        now = self.clock()

        def tx(db: sqlite3.Connection) -> Job | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status, options FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is not None and row[0] in ("queued", "running"):
                    n = db.execute("UPDATE items SET status='cancelled', finished_at=?, lease_owner=NULL "
                                   "WHERE job_id=? AND status IN ('pending', 'running')", (now, job_id)).rowcount
                    webhook = bool(json.loads(row[1]).get("webhook_url"))
                    db.execute("UPDATE jobs SET status='cancelled', cancelled=cancelled+?, finished_at=?, "
                               "expires_at=?, webhook_status=CASE WHEN ? THEN 'pending' ELSE webhook_status END, "
                               "webhook_next_at=? WHERE id=?",
                               (n, now, now + self.result_ttl_s, webhook, now, job_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            got = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
            return _job(got) if got else None
        return await self._run(tx)

    # ---- work ------------------------------------------------------------------------------
    async def claim(self, n: int, *, block_s: float = 0.0) -> list[Claim]:
        now = self.clock()

        def tx(db: sqlite3.Connection) -> list[Claim]:
            # An idle worker polls: a read-only look first, no write lock when there is nothing to take.
            if db.execute("SELECT 1 FROM items WHERE (status='pending' AND available_at<=?) "
                          "OR (status='running' AND lease_until<?) LIMIT 1", (now, now)).fetchone() is None:
                return []
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    "UPDATE items SET status='running', attempts=attempts+1, lease_owner=?, lease_until=?, "
                    "first_attempt_at=COALESCE(first_attempt_at, ?) "
                    "WHERE (job_id, idx) IN (SELECT job_id, idx FROM items WHERE "
                    "  (status='pending' AND available_at<=?) OR (status='running' AND lease_until<?) "
                    "  ORDER BY available_at LIMIT ?) "
                    "RETURNING job_id, idx, attempts, payload, first_attempt_at",
                    (self.owner, now + self.visibility_timeout_s, now, now, now, n)).fetchall()
                jobs = {r[0] for r in rows}
                options = {}
                for job_id in jobs:
                    db.execute("UPDATE jobs SET status='running' WHERE id=? AND status='queued'", (job_id,))
                    options[job_id] = json.loads(db.execute("SELECT options FROM jobs WHERE id=?",
                                                            (job_id,)).fetchone()[0])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return [Claim(job_id=r[0], index=r[1], attempts=r[2], payload=json.loads(r[3]),
                          first_attempt_at=r[4], options=options[r[0]], token=self.owner) for r in rows]
        return await self._run(tx)

    async def complete(self, claim: Claim, status: str, record: dict[str, Any]) -> tuple[bool, bool]:
        assert status in ("done", "failed")
        now = self.clock()
        result = json.dumps(record["result"]) if "result" in record else None
        error = json.dumps(record["error"]) if "error" in record else None

        def tx(db: sqlite3.Connection) -> tuple[bool, bool]:
            db.execute("BEGIN IMMEDIATE")
            try:
                # First write wins: an item already done/failed/cancelled is never written again.
                recorded = db.execute(
                    "UPDATE items SET status=?, result=?, error=?, finished_at=?, lease_owner=NULL, lease_until=NULL "
                    "WHERE job_id=? AND idx=? AND status IN ('pending', 'running')",
                    (status, result, error, now, claim.job_id, claim.index)).rowcount == 1
                finished = False
                if recorded:
                    col = "done" if status == "done" else "failed"
                    db.execute(f"UPDATE jobs SET {col}={col}+1 WHERE id=?", (claim.job_id,))
                    finished = db.execute(
                        "UPDATE jobs SET status='completed', finished_at=?, expires_at=?, "
                        "webhook_status=CASE WHEN json_extract(options, '$.webhook_url') IS NOT NULL "
                        "  THEN 'pending' ELSE webhook_status END, webhook_next_at=? "
                        "WHERE id=? AND status IN ('queued', 'running') AND done+failed+cancelled>=total",
                        (now, now + self.result_ttl_s, now, claim.job_id)).rowcount == 1
                db.execute("COMMIT")
                return recorded, finished
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(tx)

    async def retry(self, claim: Claim, delay_s: float, error: dict[str, Any]) -> None:
        now = self.clock()
        await self._run(lambda db: db.execute(
            "UPDATE items SET status='pending', available_at=?, error=?, lease_owner=NULL, lease_until=NULL "
            "WHERE job_id=? AND idx=? AND status='running'",
            (now + delay_s, json.dumps(error), claim.job_id, claim.index)))

    async def stats(self) -> dict[str, float]:
        now = self.clock()

        def q(db: sqlite3.Connection) -> dict[str, float]:
            depth, oldest = db.execute(
                "SELECT COUNT(*), MIN(j.created_at) FROM items i JOIN jobs j ON j.id = i.job_id "
                "WHERE i.status='pending'").fetchone()
            in_flight = db.execute("SELECT COUNT(*) FROM items WHERE status='running'").fetchone()[0]
            return {"depth": float(depth), "in_flight": float(in_flight),
                    "oldest_age_s": max(0.0, now - oldest) if oldest is not None else 0.0}
        return await self._run(q)

    # ---- webhooks and retention --------------------------------------------------------------
    async def due_webhooks(self, n: int, lease_s: float) -> list[Job]:
        now = self.clock()

        def tx(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(
                f"UPDATE jobs SET webhook_next_at=? WHERE id IN (SELECT id FROM jobs WHERE webhook_status='pending' "
                f"AND webhook_next_at<=? ORDER BY webhook_next_at LIMIT ?) RETURNING {_JOB_COLS}",
                (now + lease_s, now, n)).fetchall()
            return [_job(r) for r in rows]
        return await self._run(tx)

    async def webhook_outcome(self, job_id: str, status: str, attempts: int, retry_in_s: float | None) -> None:
        next_at = self.clock() + retry_in_s if retry_in_s is not None else None
        await self._run(lambda db: db.execute(
            "UPDATE jobs SET webhook_status=?, webhook_attempts=?, webhook_next_at=? WHERE id=?",
            (status, attempts, next_at, job_id)))

    async def cleanup(self) -> int:
        now = self.clock()

        def tx(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE expires_at<? AND "
                                                "webhook_status != 'pending' LIMIT 500", (now,))]
                for job_id in ids:
                    db.execute("DELETE FROM items WHERE job_id=?", (job_id,))
                    db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
                db.execute("COMMIT")
                return len(ids)
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(tx)
