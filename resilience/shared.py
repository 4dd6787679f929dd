"""Breaker state shared across replicas through Redis, off the hot path.

pybreaker's ``CircuitRedisStorage`` uses sync redis-py and reads Redis on every call; that would
block the event loop. Here the call path only ever reads the local breaker; Redis is written and
read by two background tasks:

* **writer** — when a breaker opens *locally*, ``SET {prefix}:breaker:{name} <json> PX <open_s>``
  and ``PUBLISH {prefix}:breakers <json>``; an operator's close/reset does ``DEL`` + ``PUBLISH``.
  A held (forced) open is written with a lease of ``lease_s`` that the reader renews every poll,
  so a replica that dies holding a drill does not hold the fleet open for ever.
* **reader** — subscribes to the channel (propagation ≈ one Redis round trip) and, every
  ``poll_s``, reads each key with its PTTL (a safety net for lost messages and for replicas that
  start while a breaker is open). A remote open is applied as a local open lasting the key's
  remaining TTL, measured by Redis, so replicas' clocks need not agree.

Redis down (or slow beyond ``op_timeout_s``): ``status`` becomes ``"degraded"``, every breaker keeps
working on local state, writes are dropped, and the reader reconnects with capped backoff; on
reconnect it republishes breakers this replica holds open. Nothing here raises into a call.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

import redis.asyncio as aioredis

from resilience._redis import REDIS_FAILURES as _REDIS_FAILURES
from resilience._redis import redact_url, redis_client

if TYPE_CHECKING:
    from resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)


class SharedBreakerState:
    """Shares breaker opens/closes between replicas. ``status`` is ``starting | ok | degraded``."""

    def __init__(self, url: str, *, prefix: str = "rag-sidecar", poll_s: float = 0.5,
                 op_timeout_s: float = 0.5, lease_s: float = 10.0, reconnect_max_s: float = 5.0,
                 instance_id: str | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.prefix = prefix
        self.poll_s = poll_s
        self.op_timeout_s = op_timeout_s
        self.lease_s = lease_s
        self.reconnect_max_s = reconnect_max_s
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._wall = wall_clock
        self.channel = f"{prefix}:breakers"
        self.status = "starting"
        self.last_error: str | None = None
        self.degraded_since: float | None = None
        self._breakers: dict[str, CircuitBreaker] = {}
        self._outbox: asyncio.Queue[tuple[str, str, float | None, float | None]] = asyncio.Queue(maxsize=256)
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._ok_event = asyncio.Event()

    def key(self, name: str) -> str:
        return f"{self.prefix}:breaker:{name}"

    def register(self, breaker: CircuitBreaker) -> None:
        self._breakers[breaker.name] = breaker
        breaker.attach_shared(self)

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Start the background tasks; needs a running event loop. Idempotent."""
        if self._tasks or self._closed:
            return
        self._tasks = [asyncio.create_task(self._reader(), name="shared-breaker-reader"),
                       asyncio.create_task(self._writer(), name="shared-breaker-writer")]

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected (status ``ok``); False if not within ``timeout_s``."""
        self.start()
        try:
            async with asyncio.timeout(timeout_s):
                await self._ok_event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, *_REDIS_FAILURES):
                await task
        self._tasks = []

    # ---- called from the breakers (sync, never blocks) -------------------------------------------
    def publish_open(self, name: str, duration_s: float | None, opened_at_wall: float | None) -> None:
        self._enqueue(("open", name, duration_s, opened_at_wall))

    def publish_closed(self, name: str) -> None:
        self._enqueue(("closed", name, None, None))

    def _enqueue(self, item: tuple[str, str, float | None, float | None]) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:  # Redis is slow or down; reconnect republishes what is still open
            log.warning("shared breaker state: outbox full, dropping %s %s", item[0], item[1])

    # ---- status ------------------------------------------------------------------------------
    def _mark_ok(self) -> None:
        if self.status != "ok":
            log.info("shared breaker state: connected to %s", redact_url(self.url))
        self.status, self.degraded_since = "ok", None
        self._ok_event.set()

    def _mark_degraded(self, exc: BaseException) -> None:
        if self.status != "degraded":
            log.warning("shared breaker state: Redis unavailable (%r); using local state only", exc)
            self.degraded_since = self._wall()
        self.status = "degraded"
        self.last_error = repr(exc)
        self._ok_event.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"status": self.status, "url": redact_url(self.url), "instance_id": self.instance_id,
                "last_error": self.last_error, "degraded_since": self.degraded_since, "poll_s": self.poll_s}

    # ---- Redis I/O ---------------------------------------------------------------------------
    def _payload(self, state: str, name: str, opened_at_wall: float | None = None,
                 ttl_s: float | None = None, held: bool = False) -> str:
        return json.dumps({"state": state, "name": name, "origin": self.instance_id,
                           "opened_at": opened_at_wall, "ttl_ms": None if ttl_s is None else int(ttl_s * 1000),
                           "held": held})

    async def _write_open(self, client: aioredis.Redis, name: str, duration_s: float | None,
                          opened_at_wall: float | None) -> None:
        ttl_s = self.lease_s if duration_s is None else duration_s
        ttl_ms = max(1, int(ttl_s * 1000))
        payload = self._payload("open", name, opened_at_wall, ttl_s, held=duration_s is None)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.key(name), payload, px=ttl_ms)
            pipe.publish(self.channel, payload)
            await pipe.execute()

    async def _write_closed(self, client: aioredis.Redis, name: str) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(self.key(name))
            pipe.publish(self.channel, self._payload("closed", name))
            await pipe.execute()

    async def _writer(self) -> None:
        while not self._closed:
            kind, name, duration_s, opened_at_wall = await self._outbox.get()
            client = self._client
            if client is None:
                continue  # not connected: dropped; the reader republishes live opens on reconnect
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    if kind == "open":
                        await self._write_open(client, name, duration_s, opened_at_wall)
                    else:
                        await self._write_closed(client, name)
            except _REDIS_FAILURES as exc:
                self._mark_degraded(exc)
            except Exception as exc:  # keep the writer alive; the reader republishes on reconnect
                log.exception("shared breaker state: writing %s %s failed", kind, name)
                self._mark_degraded(exc)

    async def _republish_local(self, client: aioredis.Redis) -> None:
        """Write the opens this replica holds (after a reconnect, or to renew held leases)."""
        for name, breaker in self._breakers.items():
            lease = breaker.local_open_lease()
            if lease is not None:
                remaining, opened_at_wall = lease
                if remaining is None or remaining > 0:
                    await self._write_open(client, name, remaining, opened_at_wall)

    async def _renew_held(self, client: aioredis.Redis) -> None:
        for name, breaker in self._breakers.items():
            lease = breaker.local_open_lease()
            if lease is not None and lease[0] is None:
                await self._write_open(client, name, None, lease[1])

    async def poll(self, client: aioredis.Redis | None = None) -> None:
        """Read every breaker's key once and apply remote opens (the reader does this every poll_s)."""
        client = client or self._client
        if client is None or not self._breakers:
            return
        names = list(self._breakers)
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self.key(name))
                pipe.pttl(self.key(name))
            replies = await pipe.execute()
        for i in range(len(names)):
            raw, pttl = replies[2 * i], replies[2 * i + 1]
            if raw is None or pttl is None or pttl <= 0:
                continue
            self._apply(raw, ttl_ms=pttl)

    def _apply(self, raw: bytes | str, ttl_ms: int | None = None) -> None:
        try:
            msg = json.loads(raw)
            name, state, origin = msg["name"], msg["state"], msg.get("origin")
        except (ValueError, KeyError, TypeError):
            log.warning("shared breaker state: ignoring malformed message %r", raw)
            return
        breaker = self._breakers.get(name)
        if breaker is None or origin == self.instance_id:
            return
        if state == "open":
            ttl = ttl_ms if ttl_ms is not None else msg.get("ttl_ms")
            if ttl:
                breaker.apply_remote_open(ttl / 1000.0, msg.get("opened_at"))
        elif state == "closed":
            breaker.apply_remote_close()

    async def _reader(self) -> None:
        backoff = min(0.1, self.reconnect_max_s)
        loop = asyncio.get_running_loop()
        while not self._closed:
            client = redis_client(self.url, self.op_timeout_s)
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(self.op_timeout_s * 4):
                    await pubsub.subscribe(self.channel)
                    self._client = client
                    await self._republish_local(client)
                    await self.poll(client)
                self._mark_ok()
                backoff = min(0.1, self.reconnect_max_s)
                next_poll = loop.time() + self.poll_s
                while not self._closed:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_s)
                    if msg is not None and msg.get("type") == "message":
                        self._apply(msg["data"])
                    if loop.time() >= next_poll:
                        async with asyncio.timeout(self.op_timeout_s):
                            await self._renew_held(client)
                            await self.poll(client)
                        self._mark_ok()
                        next_poll = loop.time() + self.poll_s
            except _REDIS_FAILURES as exc:
                self._mark_degraded(exc)
            except Exception as exc:  # a bug here must not end sharing for the process's lifetime
                log.exception("shared breaker state: reader failed")
                self._mark_degraded(exc)
            finally:
                self._client = None
                with contextlib.suppress(*_REDIS_FAILURES, RuntimeError):
                    async with asyncio.timeout(self.op_timeout_s):
                        await pubsub.aclose()
                        await client.aclose()
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)
