"""Breaker state shared between the worker processes of one host, without Redis.

The supervisor of ``rag-sidecar serve --workers N`` runs a :class:`BreakerHub`: a unix-socket relay
that forwards each JSON line a worker sends to every other worker and remembers the open breakers
(with their expiry) for workers that connect later (a restarted or reloaded worker). Workers use
:class:`LocalSharedBreakerState`, which speaks the same messages as the Redis-backed
:class:`resilience.shared.SharedBreakerState` (it reuses its payloads and how they are applied), so a
breaker opened in one worker opens in the others within one socket round trip (≈ 1 ms).

Held (forced) opens are renewed every ``poll_s`` with a lease of ``lease_s``, so a worker that dies
holding a drill does not hold the others open for ever. The hub down (the supervisor died): every
worker keeps its own breakers (``status: degraded``) and reconnects with a capped backoff.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from resilience.shared import SharedBreakerState

log = logging.getLogger(__name__)
_MAX_LINE = 64 << 10
_MAX_BUFFERED = 1 << 20  # a worker that stops reading is disconnected rather than buffered for ever


class BreakerHub:
    """The relay: ``await start()``, ``await close()``. Serves ``path`` (mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._peers: set[asyncio.StreamWriter] = set()
        self._opens: dict[str, tuple[dict[str, Any], float]] = {}  # name → (message, expires at loop time)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=_MAX_LINE)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for peer in list(self._peers):
                peer.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _replay(self) -> list[bytes]:
        now = asyncio.get_running_loop().time()
        out = []
        for name, (msg, expires) in list(self._opens.items()):
            if expires <= now:
                del self._opens[name]
                continue
            out.append(json.dumps({**msg, "ttl_ms": max(1, int((expires - now) * 1000))}).encode() + b"\n")
        return out

    def _remember(self, msg: dict[str, Any]) -> None:
        name = msg.get("name")
        if not isinstance(name, str):
            return
        if msg.get("state") == "open" and msg.get("ttl_ms"):
            self._opens[name] = (msg, asyncio.get_running_loop().time() + msg["ttl_ms"] / 1000)
        elif msg.get("state") == "closed":
            self._opens.pop(name, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._peers.add(writer)
        try:
            for line in self._replay():
                writer.write(line)
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self._remember(msg)
                for peer in list(self._peers):
                    if peer is writer:
                        continue
                    if peer.transport.get_write_buffer_size() > _MAX_BUFFERED:
                        peer.close()
                        self._peers.discard(peer)
                    else:
                        peer.write(line)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self._peers.discard(writer)
            writer.close()


class LocalSharedBreakerState(SharedBreakerState):
    """A worker's side of the hub; the same interface as the Redis one (``status``, ``snapshot``…)."""

    def __init__(self, path: str, *, poll_s: float = 0.5, lease_s: float = 10.0, reconnect_max_s: float = 2.0,
                 instance_id: str | None = None) -> None:
        super().__init__(f"unix://{path}", poll_s=poll_s, lease_s=lease_s, reconnect_max_s=reconnect_max_s,
                         instance_id=instance_id)
        self.path = path
        self._stream: asyncio.StreamWriter | None = None

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "url": None, "transport": "workers"}

    async def close(self) -> None:
        await super().close()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _send(self, kind: str, name: str, duration_s: float | None, opened_at_wall: float | None) -> None:
        writer = self._stream
        if writer is None:
            return  # not connected: dropped; the reader republishes live opens on reconnect
        if kind == "open":
            ttl_s = self.lease_s if duration_s is None else duration_s
            payload = self._payload("open", name, opened_at_wall, max(0.001, ttl_s), held=duration_s is None)
        else:
            payload = self._payload("closed", name)
        writer.write(payload.encode() + b"\n")

    async def _writer(self) -> None:  # type: ignore[override]
        while not self._closed:
            kind, name, duration_s, opened_at_wall = await self._outbox.get()
            try:
                self._send(kind, name, duration_s, opened_at_wall)
            except (ConnectionError, RuntimeError) as exc:
                self._mark_degraded(exc)

    def _republish(self, held_only: bool) -> None:
        for name, breaker in self._breakers.items():
            lease = breaker.local_open_lease()
            if lease is None:
                continue
            remaining, opened_at_wall = lease
            if remaining is None or (not held_only and remaining > 0):
                self._send("open", name, remaining, opened_at_wall)

    async def _reader(self) -> None:
        backoff = 0.05
        while not self._closed:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path, limit=_MAX_LINE), timeout=self.op_timeout_s * 4)
                self._stream = writer
                self._republish(held_only=False)
                self._mark_ok()
                backoff = 0.05
                while not self._closed:
                    try:  # asyncio.timeout, not wait_for: see resilience/waits.py
                        async with asyncio.timeout(self.poll_s):
                            line = await reader.readline()
                    except TimeoutError:
                        self._republish(held_only=True)  # renew held leases
                        continue
                    if not line:
                        raise ConnectionResetError("breaker hub closed the connection")
                    self._apply(line)
            except (OSError, TimeoutError, asyncio.LimitOverrunError, ValueError) as exc:
                self._mark_degraded(exc)
            finally:
                self._stream = None
                if writer is not None:
                    writer.close()
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)
