"""The shared job queue: Redis Streams with one consumer group, so every replica takes work from it.

Layout (``P`` = ``jobs.redis_prefix``; per-job keys carry a ``{job id}`` hash tag):

* ``P:stream`` — one entry per runnable query ``{j: job id, i: index}``, consumer group ``workers``.
  A worker reads with XREADGROUP; an entry is XACKed and XDELed when its outcome is recorded or it is
  sent to wait for a retry. An entry left pending longer than the visibility timeout (its worker
  died) is taken over with XAUTOCLAIM.
* ``P:delayed`` — sorted set of ``job:index`` waiting for a retry (score = due time); due members are
  moved back to the stream by an atomic script.
* ``P:job:{id}`` hash (status, counters, options), ``P:items:{id}`` (index → query),
  ``P:res:{id}`` (index → outcome, written with HSETNX: the first write wins, a duplicate execution
  changes nothing), ``P:att:{id}`` (attempts), ``P:first:{id}`` (first attempt time), ``P:err:{id}``.
* ``P:client:<client>`` — the client's unfinished queries (quota); ``P:webhooks`` — due webhooks.

Every multi-key change is one Lua script, so a crash never leaves a counter out of step with the
results. Finished jobs expire after ``result_ttl_s`` (EXPIRE on every per-job key). Redis Cluster is
not supported (the global keys and the per-job keys meet in one script); use a single primary
(with replicas/Sentinel for failover).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.jobs.store import Claim, Job, QuotaExceeded

GROUP = "workers"

_CREATE = """
-- KEYS: client counter, job, items, stream, idempotency key; ARGV: limit, total, job id, ttl, fields json, payloads...
if KEYS[5] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {2, existing} end
end
local pending = tonumber(redis.call('GET', KEYS[1]) or '0')
local total = tonumber(ARGV[2])
if pending + total > tonumber(ARGV[1]) then return {0, tostring(pending)} end
redis.call('INCRBY', KEYS[1], total)
local fields = cjson.decode(ARGV[5])
for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
for i = 0, total - 1 do
  redis.call('HSET', KEYS[3], tostring(i), ARGV[6 + i])
  redis.call('XADD', KEYS[4], '*', 'j', ARGV[3], 'i', tostring(i))
end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4]) end
return {1, ARGV[3]}
"""

_CLAIM_ITEM = """
-- KEYS: job, items, res, att, first, stream; ARGV: index, now, entry id, group
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'cancelled' or st == 'completed' or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('XACK', KEYS[6], ARGV[4], ARGV[3])
  redis.call('XDEL', KEYS[6], ARGV[3])
  return false
end
if st == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running') end
local attempts = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('HSETNX', KEYS[5], ARGV[1], ARGV[2])
return {attempts, redis.call('HGET', KEYS[2], ARGV[1]), redis.call('HGET', KEYS[5], ARGV[1]),
        redis.call('HGET', KEYS[1], 'options')}
"""

_COMPLETE = """
-- KEYS: job, res, stream, webhooks, client counter, items, att, first, err
-- ARGV: index, record json, counter field (done|failed), now, ttl, entry id, group, job id
redis.call('XACK', KEYS[3], ARGV[7], ARGV[6])
redis.call('XDEL', KEYS[3], ARGV[6])
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'cancelled' or st == 'completed' then return {0, 0} end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return {0, 0} end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
redis.call('DECR', KEYS[5])
local t = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed', 'cancelled', 'webhook_url')
if tonumber(t[2]) + tonumber(t[3]) + tonumber(t[4]) >= tonumber(t[1]) then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', ARGV[4])
  if t[5] and t[5] ~= '' then
    redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
    redis.call('ZADD', KEYS[4], ARGV[4], ARGV[8])
  end
  for _, k in ipairs({KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9]}) do
    redis.call('EXPIRE', k, ARGV[5])
  end
  return {1, 1}
end
return {1, 0}
"""

_RETRY = """
-- KEYS: stream, delayed, err; ARGV: entry id, group, member, due, index, error json
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
return 1
"""

_PROMOTE = """
-- KEYS: delayed, stream; ARGV: now, max
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local sep = string.find(member, ':', 1, true)
  redis.call('XADD', KEYS[2], '*', 'j', string.sub(member, 1, sep - 1), 'i', string.sub(member, sep + 1))
end
return #due
"""

_CANCEL = """
-- KEYS: job, client counter, webhooks, res, items, att, first, err; ARGV: now, ttl, job id
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' and st ~= 'running' then return 0 end
local t = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed', 'webhook_url')
local remaining = tonumber(t[1]) - tonumber(t[2]) - tonumber(t[3])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled', remaining, 'finished_at', ARGV[1])
redis.call('DECRBY', KEYS[2], remaining)
if t[4] and t[4] ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
end
for _, k in ipairs({KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]}) do
  redis.call('EXPIRE', k, ARGV[2])
end
return remaining
"""

_DUE_WEBHOOKS = """
-- KEYS: webhooks; ARGV: now, lease, max
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return ids
"""


class RedisJobStore:
    def __init__(self, url: str, *, prefix: str, visibility_timeout_s: float, result_ttl_s: float,
                 clock: Callable[[], float] = time.time, timeout_s: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.visibility_timeout_s = visibility_timeout_s
        self.result_ttl_s = result_ttl_s
        self.clock = clock
        self.timeout_s = timeout_s
        self.consumer = f"{uuid.uuid4().hex[:12]}"
        self.stream = f"{prefix}:stream"
        self.delayed = f"{prefix}:delayed"
        self.webhooks = f"{prefix}:webhooks"
        self.r: aioredis.Redis | None = None
        self._group_ready = False

    def _keys(self, job_id: str) -> dict[str, str]:
        tag = "{" + job_id + "}"
        return {name: f"{self.prefix}:{name}:{tag}" for name in ("job", "items", "res", "att", "first", "err")}

    def _client_key(self, client: str) -> str:
        return f"{self.prefix}:client:{client}"

    async def open(self) -> None:
        # Socket timeout above the longest XREADGROUP block (1 s at most), so a dead server is noticed.
        self.r = aioredis.Redis.from_url(self.url, decode_responses=True, socket_timeout=self.timeout_s,
                                         socket_connect_timeout=self.timeout_s)
        self._create = self.r.register_script(_CREATE)
        self._claim_item = self.r.register_script(_CLAIM_ITEM)
        self._complete = self.r.register_script(_COMPLETE)
        self._retry = self.r.register_script(_RETRY)
        self._promote = self.r.register_script(_PROMOTE)
        self._cancel = self.r.register_script(_CANCEL)
        self._due_webhooks = self.r.register_script(_DUE_WEBHOOKS)

    async def close(self) -> None:
        if self.r is not None:
            await self.r.aclose()
            self.r = None

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        assert self.r is not None
        try:
            await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # ---- submission ------------------------------------------------------------------------
    async def create(self, job: Job, payloads: list[dict[str, Any]], *, max_pending_per_client: int,
                     idempotency_key: str | None = None) -> Job:
        await self._ensure_group()
        k = self._keys(job.id)
        idem = f"{self.prefix}:idem:{job.client}:{idempotency_key}" if idempotency_key else ""
        fields = {"id": job.id, "client": job.client, "status": "queued", "created_at": repr(job.created_at),
                  "total": job.total, "done": 0, "failed": 0, "cancelled": 0, "options": json.dumps(job.options),
                  "webhook_url": job.options.get("webhook_url", ""), "webhook_status": "none",
                  "webhook_attempts": 0}
        # The idempotency key lives as long as an unfinished job may (a week) plus the result TTL.
        code, value = await self._create(
            keys=[self._client_key(job.client), k["job"], k["items"], self.stream, idem],
            args=[max_pending_per_client, job.total, job.id, int(self.result_ttl_s + 7 * 86400),
                  json.dumps({k: str(v) for k, v in fields.items()}), *(json.dumps(p) for p in payloads)])
        if int(code) == 0:
            raise QuotaExceeded(int(value), max_pending_per_client)
        if int(code) == 2:
            existing = await self.get(value)
            if existing is not None:
                return existing
        return job

    def _job(self, h: dict[str, str]) -> Job:
        return Job(id=h["id"], client=h["client"], status=h["status"], created_at=float(h["created_at"]),
                   finished_at=float(h["finished_at"]) if h.get("finished_at") else None, total=int(h["total"]),
                   done=int(h["done"]), failed=int(h["failed"]), cancelled=int(h["cancelled"]),
                   options=json.loads(h["options"]), webhook_status=h.get("webhook_status", "none"),
                   webhook_attempts=int(h.get("webhook_attempts", 0)))

    async def get(self, job_id: str) -> Job | None:
        assert self.r is not None
        h: dict[str, str] = await self.r.hgetall(self._keys(job_id)["job"])  # type: ignore[assignment]
        return self._job(h) if h else None

    async def items(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        assert self.r is not None
        job = await self.get(job_id)
        if job is None:
            return []
        k = self._keys(job_id)
        idx = [str(i) for i in range(offset, min(job.total, offset + limit))]
        if not idx:
            return []
        async with self.r.pipeline(transaction=False) as p:
            p.hmget(k["res"], idx)
            p.hmget(k["att"], idx)
            p.hmget(k["err"], idx)
            results, attempts, errors = await p.execute()
        out = []
        for i, res, att, err in zip(idx, results, attempts, errors):
            if res is not None:
                out.append({"index": int(i), **json.loads(res)})
                continue
            status = "cancelled" if job.status == "cancelled" else ("running" if att and not err else "pending")
            item: dict[str, Any] = {"index": int(i), "status": status, "attempts": int(att or 0)}
            if err:
                item["error"] = json.loads(err)
            out.append(item)
        return out

    async def cancel(self, job_id: str) -> Job | None:
        assert self.r is not None
        job = await self.get(job_id)
        if job is None:
            return None
        k = self._keys(job_id)
        await self._cancel(keys=[k["job"], self._client_key(job.client), self.webhooks, k["res"], k["items"],
                                 k["att"], k["first"], k["err"]],
                           args=[repr(self.clock()), int(self.result_ttl_s), job_id])
        return await self.get(job_id)

    # ---- work ------------------------------------------------------------------------------
    async def claim(self, n: int, *, block_s: float = 0.0) -> list[Claim]:
        assert self.r is not None
        await self._ensure_group()
        now = self.clock()
        await self._promote(keys=[self.delayed, self.stream], args=[repr(now), 200])
        entries: list[tuple[str, dict[str, str]]] = []
        _, reclaimed, *_ = await self.r.xautoclaim(self.stream, GROUP, self.consumer,
                                                   min_idle_time=int(self.visibility_timeout_s * 1000),
                                                   start_id="0-0", count=n)
        entries += [(eid, f) for eid, f in reclaimed if f]
        if len(entries) < n:
            block = int(min(block_s, 1.0) * 1000) if not entries and block_s > 0 else None
            got = await self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=n - len(entries),
                                          block=block)
            for _, stream_entries in cast("list[tuple[str, list[tuple[str, dict[str, str]]]]]", got or []):
                entries += [(eid, f) for eid, f in stream_entries if f]
        claims = []
        for entry_id, fields in entries:
            job_id, index = fields["j"], fields["i"]
            k = self._keys(job_id)
            got = await self._claim_item(keys=[k["job"], k["items"], k["res"], k["att"], k["first"], self.stream],
                                         args=[index, repr(now), entry_id, GROUP])
            if not got:
                continue
            attempts, payload, first, options = got
            claims.append(Claim(job_id=job_id, index=int(index), attempts=int(attempts),
                                payload=json.loads(payload), first_attempt_at=float(first),
                                options=json.loads(options), token=entry_id))
        return claims

    async def complete(self, claim: Claim, status: str, record: dict[str, Any]) -> tuple[bool, bool]:
        assert status in ("done", "failed")
        k = self._keys(claim.job_id)
        job = await self.get(claim.job_id)
        client_key = self._client_key(job.client) if job else f"{self.prefix}:client:?"
        body = json.dumps({"status": status, "attempts": claim.attempts, **record})
        recorded, finished = await self._complete(
            keys=[k["job"], k["res"], self.stream, self.webhooks, client_key, k["items"], k["att"], k["first"],
                  k["err"]],
            args=[str(claim.index), body, status, repr(self.clock()), int(self.result_ttl_s), claim.token, GROUP,
                  claim.job_id])
        return bool(recorded), bool(finished)

    async def retry(self, claim: Claim, delay_s: float, error: dict[str, Any]) -> None:
        k = self._keys(claim.job_id)
        await self._retry(keys=[self.stream, self.delayed, k["err"]],
                          args=[claim.token, GROUP, f"{claim.job_id}:{claim.index}", repr(self.clock() + delay_s),
                                str(claim.index), json.dumps(error)])

    async def stats(self) -> dict[str, float]:
        assert self.r is not None
        await self._ensure_group()
        async with self.r.pipeline(transaction=False) as p:
            p.xlen(self.stream)
            p.xpending(self.stream, GROUP)
            p.zcard(self.delayed)
            p.xrange(self.stream, "-", "+", count=1)
            length, pending, delayed, first = await p.execute()
        in_flight = int(pending["pending"]) if pending else 0
        oldest = 0.0
        if first:
            oldest = max(0.0, self.clock() - int(first[0][0].split("-")[0]) / 1000)
        return {"depth": float(length - in_flight + delayed), "in_flight": float(in_flight), "oldest_age_s": oldest}

    # ---- webhooks and retention --------------------------------------------------------------
    async def due_webhooks(self, n: int, lease_s: float) -> list[Job]:
        assert self.r is not None
        ids = await self._due_webhooks(keys=[self.webhooks], args=[repr(self.clock()), lease_s, n])
        jobs = [await self.get(i) for i in ids]
        stale = [i for i, j in zip(ids, jobs) if j is None]
        if stale:
            await self.r.zrem(self.webhooks, *stale)
        return [j for j in jobs if j is not None]

    async def webhook_outcome(self, job_id: str, status: str, attempts: int, retry_in_s: float | None) -> None:
        assert self.r is not None
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._keys(job_id)["job"], mapping={"webhook_status": status, "webhook_attempts": attempts})
            if status == "pending" and retry_in_s is not None:
                p.zadd(self.webhooks, {job_id: self.clock() + retry_in_s})
            else:
                p.zrem(self.webhooks, job_id)
            await p.execute()

    async def cleanup(self) -> int:
        return 0  # finished jobs carry an EXPIRE of result_ttl_s on every key
