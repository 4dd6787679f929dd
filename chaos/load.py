"""The drill's open-loop load: :class:`LoadGenerator` sends POST /v1/query arrivals at a fixed rate
(see :mod:`chaos.drill`) and keeps one :class:`RequestRecord` per request, as the client saw it."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

from chaos.scenario import MODES, Scenario
from resilience.waits import wait_event

log = logging.getLogger("chaos.drill")


@dataclass
class RequestRecord:
    """One request as the drill saw it. ``t`` is its start, seconds since the drill started."""

    i: int
    t: float
    stream: bool
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None          # hung | connection | incomplete_stream | stream_error | bad_body
    mode: str | None = None
    degraded: bool | None = None
    degradations: list[dict[str, Any]] = field(default_factory=list)
    header_mode: str | None = None
    header_degraded: str | None = None
    discarded: bool = False
    kb_version: str | None = None      # /v1/query: the KB version that answered

    @property
    def hung(self) -> bool:
        return self.error == "hung"

    @property
    def available(self) -> bool:
        """Answered, and not with a 5xx (a hang or a broken stream is not an answer)."""
        return self.status is not None and self.status < 500 and self.error is None

    def label_problem(self, allow_undegraded: Sequence[str] = ()) -> str | None:
        """Why this answer is not honestly labelled (None = labelled, or not an answer to judge)."""
        if self.status not in (200, 503) or self.error is not None:
            return None
        if self.mode not in MODES:
            return f"mode {self.mode!r} is not a contract mode"
        if not isinstance(self.degraded, bool):
            return "degraded missing"
        if self.degraded != bool(self.degradations):
            return f"degraded={self.degraded} but {len(self.degradations)} degradation(s)"
        if self.mode != "full" and not self.degraded and self.mode not in allow_undegraded:
            return f"mode {self.mode} but degraded false"
        if any(not (isinstance(d, dict) and d.get("component") and d.get("reason")) for d in self.degradations):
            return "a degradation without component/reason"
        if not self.stream:  # SSE answers carry the contract in their done event only
            if self.header_mode != self.mode:
                return f"X-RAG-Mode {self.header_mode!r} != body mode {self.mode!r}"
            if self.header_degraded != ("true" if self.degraded else "false"):
                return f"X-RAG-Degraded {self.header_degraded!r} != body degraded {self.degraded}"
        return None

    @property
    def short_circuited(self) -> bool:
        """Every degradation was a breaker short-circuit: the answer took the fallback path at once."""
        return bool(self.degradations) and all(d.get("reason") == "breaker_open" for d in self.degradations)


class LoadGenerator:
    """Open-loop POST /v1/query load (see the module docstring). Records go to ``records``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, scenario: Scenario, queries: Sequence[str],
                 clock: Callable[[], float], *, seed: int = 0) -> None:
        self.session = session
        self.url = url.rstrip("/") + ("/v1/messages" if scenario.load.endpoint == "messages" else "/v1/query")
        self.load = scenario.load
        self.queries = list(queries)
        random.Random(seed).shuffle(self.queries)
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.skipped = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        # load.clients > 1: one session per extra client, from its own loopback address (see client_sessions)
        self._sessions: list[aiohttp.ClientSession] = [session]
        self._own_sessions: list[aiohttp.ClientSession] = []

    def _client_sessions(self) -> None:
        """Sessions for clients 2..N, each bound to 127.0.1.N (the target must be on loopback)."""
        from urllib.parse import urlsplit

        host = urlsplit(self.url).hostname or ""
        if self.load.clients > 1 and not (host == "localhost" or host.startswith("127.")):
            raise ValueError(f"load.clients > 1 needs a loopback target (each client is a 127.0.1.N address), "
                             f"not {host!r}")
        limit = max(self.load.concurrency // self.load.clients + 8, 16)
        for n in range(2, self.load.clients + 1):
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.1.{n}", 0), limit=limit)
            self._own_sessions.append(aiohttp.ClientSession(connector=connector))
        self._sessions += self._own_sessions

    async def close(self) -> None:
        """Close the extra clients' sessions (the caller's own session stays open)."""
        for session in self._own_sessions:
            await session.close()
        self._own_sessions.clear()
        self._sessions = self._sessions[:1]

    async def run(self, max_s: float) -> None:
        """Send arrivals until :attr:`stop` is set, ``max_s`` seconds pass or ``max_requests`` were due."""
        load = self.load
        if load.clients > 1 and len(self._sessions) == 1:
            self._client_sessions()
        interval = 1.0 / load.rate_per_s
        start = self.clock()
        if load.duration_s is not None:
            max_s = min(max_s, load.duration_s)
        for i in range(load.max_requests):
            due = start + i * interval
            if due - start >= max_s or self.stop.is_set():
                break
            wait = due - self.clock()
            if wait > 0 and await wait_event(self.stop, wait):
                break
            if len(self._in_flight) >= load.concurrency:
                self.skipped += 1
                continue
            stream = int((i + 1) * load.stream_share) > int(i * load.stream_share)
            record = RequestRecord(i=i, t=self.clock(), stream=stream)
            self.records.append(record)
            session = self._sessions[i % len(self._sessions)]
            task = asyncio.create_task(self._one(record, self.queries[i % len(self.queries)], session))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def drain(self) -> None:
        """Wait for in-flight requests; each ends by itself at its deadline + slack at the latest."""
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await self.drain()

    async def _one(self, rec: RequestRecord, query: str, session: aiohttp.ClientSession | None = None) -> None:
        """One request; its outcome and latency land in ``rec`` (a timeout past deadline + slack is hung)."""
        t0 = time.perf_counter()
        session = session or self.session
        try:
            if self.load.endpoint == "messages":
                await self._message(rec, query, session)
            else:
                await self._query(rec, query, session)
        except TimeoutError:
            rec.error = "hung"
        except aiohttp.ClientError as exc:
            rec.error = "connection"
            log.debug("request %d: %r", rec.i, exc)
        finally:
            rec.latency_ms = (time.perf_counter() - t0) * 1e3

    async def _query(self, rec: RequestRecord, query: str, session: aiohttp.ClientSession) -> None:
        load = self.load
        body: dict[str, Any] = {"query": query}
        if rec.stream:
            body["stream"] = True
        if load.top_k:
            body["top_k"] = load.top_k
        headers = {"X-Request-Timeout": f"{load.request_timeout_s:g}", "X-Client-Id": "chaos-drill"}
        timeout = aiohttp.ClientTimeout(total=load.request_timeout_s + load.slack_s)
        async with session.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
            rec.status = resp.status
            rec.header_mode = resp.headers.get("X-RAG-Mode")
            rec.header_degraded = resp.headers.get("X-RAG-Degraded")
            if resp.content_type == "text/event-stream":
                contract = await _read_sse(resp, rec)
                if contract is None:
                    rec.error = "incomplete_stream"
            else:
                contract = await _read_json(resp)
                if contract is None and resp.status in (200, 503):
                    rec.error = "bad_body"
            if isinstance(contract, dict):
                rec.mode = contract.get("mode")
                rec.degraded = contract.get("degraded")
                rec.degradations = list(contract.get("degradations") or [])
                rec.kb_version = contract.get("kb_version")

    async def _message(self, rec: RequestRecord, query: str, session: aiohttp.ClientSession) -> None:
        """POST /v1/messages as an Anthropic SDK would; the contract comes from the X-RAG-* headers (the
        body is Anthropic's): ``mode``, ``degraded``, ``degradations`` (X-RAG-Degradations JSON)."""
        load = self.load
        body: dict[str, Any] = {"model": load.model, "max_tokens": 256, "stream": rec.stream,
                                "messages": [{"role": "user", "content": query}]}
        headers = {"X-Request-Timeout": f"{load.request_timeout_s:g}", "anthropic-version": "2023-06-01"}
        timeout = aiohttp.ClientTimeout(total=load.request_timeout_s + load.slack_s)
        async with session.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
            rec.status = resp.status
            rec.header_mode = rec.mode = resp.headers.get("X-RAG-Mode")
            rec.header_degraded = resp.headers.get("X-RAG-Degraded")
            rec.degraded = rec.header_degraded == "true" if rec.header_degraded else None
            try:
                rec.degradations = list(json.loads(resp.headers.get("X-RAG-Degradations") or "[]"))
            except ValueError:
                rec.error = "bad_body"
            raw = await resp.read()
            if resp.status == 200 and rec.stream and b"event: message_stop" not in raw:
                # Anthropic's own `event: error` ends a stream honestly (the SDK raises); a stream that just
                # stops is a truncated answer an SDK may take for a complete one.
                rec.error = "stream_error" if b"event: error" in raw else "incomplete_stream"
            elif resp.status == 200 and not rec.stream and _json_or_none(raw) is None:
                rec.error = "bad_body"


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _read_json(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _read_sse(resp: aiohttp.ClientResponse, rec: RequestRecord) -> dict[str, Any] | None:
    """Read an SSE answer; returns the ``done`` event's contract (None if the stream ended without one)."""
    event, data, done = "", [], None
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if event == "discard":
                rec.discarded = True
            elif event == "done" and data:
                try:
                    done = json.loads("\n".join(data))
                except ValueError:
                    done = None
            event, data = "", []
    return done
