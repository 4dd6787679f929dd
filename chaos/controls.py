"""The drill's control plane: where requests and faults go (:class:`DrillTarget`) and the client that
applies actions to the fault proxy, the stand-ins and the gateway admin API and reads their counters
(:class:`Controls`)."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

from chaos.proxy.client import ToxiproxyClient, ToxiproxyNotFound
from chaos.scenario import Action, Rollback, Scenario

# Which proxy (Toxiproxy name) and which guards front each dependency, by default (the local stack's names).
DEFAULT_PROXIES = {"vector_db": "weaviate_grpc", "embedder": "embeddings", "llm": "anthropic",
                   "shared_state": "redis"}
GUARDS = {"embedder": ("embedder",), "vector_db": ("vector_db",), "llm": ("llm", "llm_fallback"),
          "llm_fallback": ("llm_fallback",)}
# --stub NAME=URL accepts a dependency or a stand-in's name.
STUB_ALIASES = {"weaviate": "vector_db", "anthropic": "llm", "embeddings": "embedder",
                "vector_db": "vector_db", "llm": "llm", "embedder": "embedder"}
CONTROL_TIMEOUT_S = 5.0  # every control-plane call (toxics, stand-in faults, admin) is bounded by this


class DrillError(Exception):
    """The drill could not run or apply an action (pre-flight, or an action the target refused)."""


@dataclass
class DrillTarget:
    """Where the drill's requests and faults go.

    ``url``: the gateway; ``toxiproxy``: the fault proxy's API (ours or a real Toxiproxy);
    ``stubs``: dependency → stand-in base URL (``/__faults__``, ``/__stats__``); ``admin_token``:
    the gateway's admin token (breaker states, breaker actions, ``/admin/faults``); ``proxies``:
    dependency → proxy name for toxic actions.
    """

    url: str
    toxiproxy: str | None = None
    stubs: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    proxies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROXIES))
    dogstatsd: str | None = None  # where drill start/end events go (chaos.events); None = nowhere

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "toxiproxy": self.toxiproxy, "stubs": dict(self.stubs),
                "admin": self.admin_token is not None, "proxies": dict(self.proxies)}


# ---- slow clients (the slow_clients action) ----------------------------------------------------------
SLOW_CLIENT_MAX_CONNECTIONS = 1000  # a slow client reconnects at most this often (bounded loop)


async def _trickle(host: str, port: int, at_once: bytes, trickled: bytes, bytes_per_s: float,
                   lived: list[float] | None = None) -> None:
    """Send ``at_once``, then ``trickled`` one byte every ``1 / bytes_per_s`` s; reconnect whenever the gateway
    closes the connection. With ``lived``, how long each connection stayed open is appended to it (on
    cancellation too: a connection never closed lived the whole window)."""
    loop = asyncio.get_running_loop()
    for _ in range(SLOW_CLIENT_MAX_CONNECTIONS):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        opened = loop.time()
        try:
            writer.write(at_once)
            for i in range(len(trickled)):
                if reader.at_eof():
                    break
                writer.write(trickled[i:i + 1])
                await writer.drain()
                await asyncio.sleep(1.0 / bytes_per_s)
        except (OSError, ConnectionError):
            pass
        finally:
            if lived is not None:
                lived.append(loop.time() - opened)
            writer.close()


async def _trickle_body(host: str, port: int, bytes_per_s: float) -> None:
    """POST /v1/query whose body arrives ``bytes_per_s``; reconnect whenever the gateway closes it."""
    body = json.dumps({"query": "json dumps indent " + "x" * 2000}).encode()
    head = (f"POST /v1/query HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Client-Id: chaos-slow-client\r\n\r\n").encode()
    await _trickle(host, port, head, body, bytes_per_s)


async def _trickle_headers(host: str, port: int, bytes_per_s: float, lived: list[float]) -> None:
    """A slowloris: request headers sent ``bytes_per_s``, never finished; how long each connection stayed
    open until the gateway closed it (or the undo ended it) goes to ``lived``; reconnect when closed."""
    head = (f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slowloris: " + "x" * 4000).encode()
    await _trickle(host, port, b"", head, bytes_per_s, lived)


@dataclass
class NoisyClientStats:
    """What a ``noisy_client`` action saw: answers by HTTP status (or ``connection``), and its running time."""

    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accepted(self) -> int:
        """Requests the gateway took on (anything but a 429)."""
        return sum(n for k, n in self.by_status.items() if k != "429")


async def _noisy_client(url: str, source: str, rate_per_s: float, concurrency: int,
                        stats: NoisyClientStats) -> None:
    """Open-loop POST /v1/query at ``rate_per_s`` from another loopback address (another client to the
    gateway's rate limiter); an arrival finding ``concurrency`` in flight is dropped. Runs until cancelled."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=5)

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url + "/v1/query", json={"query": "json dumps indent"}, timeout=timeout) as r:
                await r.read()
                key = str(r.status)
        except (aiohttp.ClientError, TimeoutError):
            key = "connection"
        stats.by_status[key] = stats.by_status.get(key, 0) + 1

    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=concurrency)
    start = loop.time()
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(10_000_000):  # bounded by the undo, which cancels it
                await asyncio.sleep(max(0.0, start + i / rate_per_s - loop.time()))
                if len(in_flight) < concurrency:
                    task = asyncio.create_task(one(session))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
    finally:
        stats.seconds = loop.time() - start
        for task in list(in_flight):
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _slow_reader(host: str, port: int, bytes_per_s: float) -> None:
    """A streamed /v1/query read ``bytes_per_s`` (small receive buffer, so the gateway's writes back up)."""
    import socket

    body = json.dumps({"query": "how do I read a csv file with the csv module", "stream": True}).encode()
    request = (f"POST /v1/query HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nX-Client-Id: chaos-slow-reader\r\n\r\n").encode() + body
    chunk = max(1, int(bytes_per_s / 10))
    for _ in range(SLOW_CLIENT_MAX_CONNECTIONS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            await asyncio.sleep(0.2)
            continue
        try:
            writer.write(request)
            await writer.drain()
            for _ in range(100_000):  # ~3 h at 10 reads/s: the undo cancels it long before
                if not await reader.read(chunk):
                    break
                await asyncio.sleep(0.1)
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()


# ---- the control plane ---------------------------------------------------------------------------
Undo = Callable[[], Awaitable[None]]


class Controls:
    """Applies actions to the fault proxy, the stand-ins and the gateway admin API; reads their counters."""

    def __init__(self, target: DrillTarget, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        self.toxiproxy = ToxiproxyClient(target.toxiproxy, timeout_s=CONTROL_TIMEOUT_S) if target.toxiproxy else None
        self._timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)
        # slow_clients header tricklers: how long each connection stayed open (s)
        self.slow_header_lives: list[float] = []
        self.noisy_clients: list[NoisyClientStats] = []  # noisy_client actions, in order

    async def close(self) -> None:
        if self.toxiproxy is not None:
            await self.toxiproxy.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _proxy(self, target: str) -> str:
        self._fault_proxy()
        return self.target.proxies.get(target, target)

    def _fault_proxy(self) -> ToxiproxyClient:
        if self.toxiproxy is None:
            raise DrillError("this action needs the fault proxy: pass --toxiproxy URL")
        return self.toxiproxy

    def _stub(self, target: str) -> str:
        dep = STUB_ALIASES.get(target, target)
        url = self.target.stubs.get(dep)
        if url is None:
            raise DrillError(f"no stand-in URL for {target!r}: pass --stub {dep}=URL")
        return url.rstrip("/")

    def _admin_headers(self) -> dict[str, str]:
        if not self.target.admin_token:
            raise DrillError("this action needs the gateway's admin token: pass --admin-token")
        return {"Authorization": f"Bearer {self.target.admin_token}"}

    async def _http(self, method: str, url: str, *, json_body: Any = None,
                    headers: dict[str, str] | None = None, ok_404: bool = False) -> Any:
        async with self.session.request(method, url, json=json_body, headers=headers, timeout=self._timeout) as resp:
            text = await resp.text()
            if resp.status == 404 and ok_404:
                return None
            if resp.status >= 400:
                raise DrillError(f"{method} {url} -> {resp.status}: {text[:300]}")
            return json.loads(text) if text.strip() else None

    # -- actions -------------------------------------------------------------------------------
    async def apply(self, action: Action | Rollback, index: int = 0) -> Undo | None:
        """Apply one action; returns how to undo it (None for actions that undo nothing)."""
        kind, target, attrs = action.action, action.target, dict(action.attributes)
        if kind == "toxic_add":
            proxy = self._proxy(target)
            stream = attrs.get("stream", "downstream")
            name = attrs.get("name") or f"drill{index}_{attrs['type']}_{stream}"
            await self._fault_proxy().add_toxic(proxy, attrs["type"], attributes=attrs.get("attributes") or {},
                                           stream=stream, toxicity=float(attrs.get("toxicity", 1.0)), name=name)
            return lambda: self._remove_toxic(proxy, name)
        if kind == "toxic_update":
            await self._fault_proxy().update_toxic(self._proxy(target), attrs["name"], attributes=attrs.get("attributes"),
                                              toxicity=attrs.get("toxicity"))
            return None
        if kind == "toxic_remove":
            await self._remove_toxic(self._proxy(target), attrs["name"])
            return None
        if kind == "proxy_disable":
            proxy = self._proxy(target)
            await self._fault_proxy().disable(proxy)
            return lambda: self._enable(proxy)
        if kind == "proxy_enable":
            await self._enable(self._proxy(target))
            return None
        if kind == "stub_fault":
            url = self._stub(target) + "/__faults__"
            previous = await self._http("GET", url)
            await self._http("PATCH", url, json_body=attrs)
            return lambda: self._http("PUT", url, json_body=previous)
        if kind == "stub_clear":
            await self._http("DELETE", self._stub(target) + "/__faults__")
            return None
        if kind == "gateway_fault":
            url = f"{self.target.url.rstrip('/')}/admin/faults/{target}"
            await self._http("PUT", url, json_body=attrs, headers=self._admin_headers())
            return lambda: self._http("DELETE", url, headers=self._admin_headers())
        if kind == "gateway_fault_clear":
            suffix = "" if target == "all" else f"/{target}"
            await self._http("DELETE", f"{self.target.url.rstrip('/')}/admin/faults{suffix}",
                             headers=self._admin_headers())
            return None
        if kind in ("breaker_open", "breaker_close", "breaker_reset"):
            verb = kind.split("_", 1)[1]
            names = GUARDS.get(target, (target,)) if verb != "open" else (target,)
            for name in names:
                await self._http("POST", f"{self.target.url.rstrip('/')}/admin/breakers/{name}/{verb}",
                                 headers=self._admin_headers())
            if kind == "breaker_open":
                return lambda: self._http("POST", f"{self.target.url.rstrip('/')}/admin/breakers/{target}/close",
                                          headers=self._admin_headers())
            return None
        if kind in ("kb_activate", "kb_rollback"):
            # An operator's KB switch under load; undone by switching back to the version it replaced.
            base = f"{self.target.url.rstrip('/')}/admin/kb"
            if kind == "kb_activate":
                result = await self._http("POST", base + "/activate", json_body={"version": attrs["version"]},
                                          headers=self._admin_headers())
            else:
                result = await self._http("POST", base + "/rollback", headers=self._admin_headers())
            previous = (result or {}).get("previous")
            if not previous:
                return None
            return lambda: self._http("POST", base + "/activate", json_body={"version": previous},
                                      headers=self._admin_headers())
        if kind == "slow_clients":
            return self._slow_clients(attrs)
        if kind == "noisy_client":
            return self._noisy_client(attrs)
        raise DrillError(f"unknown action {kind!r}")

    def _slow_clients(self, attrs: dict[str, Any]) -> Undo:
        """Start ``trickle`` clients that send a request body at ``bytes_per_s`` (reconnecting when the
        gateway drops them, as a slowloris does), ``slow_readers`` that ask for a streamed answer and
        read it ``bytes_per_s`` through a 4 KB receive buffer, and ``trickle_headers`` clients that send
        their request *headers* at ``bytes_per_s`` (how long each lasted: :attr:`slow_header_lives`);
        the undo closes them all."""
        from urllib.parse import urlsplit

        url = urlsplit(self.target.url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        rate = float(attrs.get("bytes_per_s", 20.0))
        tasks = [asyncio.create_task(_trickle_body(host, port, rate)) for _ in range(int(attrs.get("trickle", 4)))]
        tasks += [asyncio.create_task(_slow_reader(host, port, rate)) for _ in range(int(attrs.get("slow_readers", 4)))]
        tasks += [asyncio.create_task(_trickle_headers(host, port, rate, self.slow_header_lives))
                  for _ in range(int(attrs.get("trickle_headers", 0)))]

        async def undo() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return undo

    def _noisy_client(self, attrs: dict[str, Any]) -> Undo:
        """One client flooding /v1/query at ``rate_per_s`` from ``source`` (another loopback address);
        the undo stops it. What it got is in :attr:`noisy_clients`."""
        stats = NoisyClientStats()
        self.noisy_clients.append(stats)
        task = asyncio.create_task(_noisy_client(
            self.target.url.rstrip("/"), str(attrs.get("source", "127.0.0.2")), float(attrs["rate_per_s"]),
            int(attrs.get("concurrency", 64)), stats))

        async def undo() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return undo

    async def _remove_toxic(self, proxy: str, name: str) -> None:
        try:
            await self._fault_proxy().remove_toxic(proxy, name)
        except ToxiproxyNotFound:
            pass  # already gone: the goal of a removal is met

    async def _enable(self, proxy: str) -> None:
        await self._fault_proxy().enable(proxy)

    def needs(self, scenario: Scenario) -> set[str]:
        """What the scenario's actions need: ``toxiproxy``, ``stub:<dep>``, ``admin``."""
        out: set[str] = set()
        actions: list[Action | Rollback] = [*scenario.method, *scenario.rollbacks]
        for a in actions:
            if a.action.startswith(("toxic_", "proxy_")):
                out.add("toxiproxy")
            elif a.action.startswith("stub_"):
                out.add(f"stub:{STUB_ALIASES.get(a.target, a.target)}")
            elif a.action not in ("slow_clients", "noisy_client"):  # these only need the gateway's own port
                out.add("admin")
        return out

    # -- counters ------------------------------------------------------------------------------
    async def stub_attempts(self, dependency: str) -> int | None:
        """Upstream calls the stand-in saw (data plane only); None when unknown/unreachable."""
        return (await self.stub_counters(dependency))[0]

    async def stub_counters(self, dependency: str) -> tuple[int | None, dict[str, int] | None]:
        """(upstream calls the stand-in saw, the most it served at once since its stats were reset:
        ``{"": overall, model: per model}``); None for what is unknown/unreachable."""
        url = self.target.stubs.get(dependency)
        if url is None:
            return None, None
        try:
            stats = await self._http("GET", url.rstrip("/") + "/__stats__")
        except (DrillError, aiohttp.ClientError, TimeoutError):
            return None, None
        if not isinstance(stats, dict):
            return None, None
        if "search_calls" in stats:  # FakeWeaviate: gRPC data-plane counters
            return int(stats["search_calls"]), None
        routes = [v for k, v in stats.items() if isinstance(v, dict) and k.startswith("POST ")]
        peaks: dict[str, int] = {}
        for v in routes:
            if "peak_in_flight" in v:
                peaks[""] = max(peaks.get("", 0), int(v["peak_in_flight"]))
            for model, n in (v.get("peak_in_flight_by_model") or {}).items():
                peaks[model] = max(peaks.get(model, 0), int(n))
        return sum(int(v.get("requests", 0)) for v in routes), peaks or None

    async def breakers(self) -> dict[str, dict[str, Any]] | None:
        """``{guard: {state, opened, attempts}}`` from ``GET /admin/breakers``; None without admin access."""
        if not self.target.admin_token:
            return None
        try:
            snap = await self._http("GET", f"{self.target.url.rstrip('/')}/admin/breakers",
                                    headers=self._admin_headers())
        except (DrillError, aiohttp.ClientError, TimeoutError):
            return None
        out = {}
        for name, g in (snap or {}).items():
            breaker = g.get("breaker") or {}
            out[name] = {"state": g.get("state"), "opened": int((breaker.get("totals") or {}).get("opened", 0)),
                         "attempts": int((g.get("stats") or {}).get("attempts", 0))}
        return out

    async def proxy_stats(self) -> dict[str, dict[str, int]] | None:
        """``{proxy: {connections, resets}}`` from our fault proxy's ``/__stats__``; None for a real
        Toxiproxy (it keeps no such counters) or when unreachable."""
        if self.target.toxiproxy is None:
            return None
        try:
            stats = await self._http("GET", self.target.toxiproxy.rstrip("/") + "/__stats__")
        except (DrillError, aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return stats if isinstance(stats, dict) else None

    async def shared_state(self) -> str | None:
        """``components.shared_state.status`` of ``GET /health`` (off | starting | ok | degraded)."""
        try:
            async with self.session.get(f"{self.target.url.rstrip('/')}/health", timeout=self._timeout) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        status = ((body or {}).get("components") or {}).get("shared_state", {}).get("status")
        return status if isinstance(status, str) else None

    async def snapshot(self) -> dict[str, Any]:
        """Breakers, stand-in attempt counters, fault-proxy counters and /health's shared-state status,
        read concurrently."""
        deps = sorted(self.target.stubs)
        results = await asyncio.gather(self.breakers(), self.proxy_stats(), self.shared_state(),
                                       *(self.stub_counters(d) for d in deps))
        counters: list[tuple[int | None, dict[str, int] | None]] = list(results[3:])  # type: ignore[arg-type]
        return {"breakers": results[0], "proxies": results[1], "shared_state": results[2],
                "attempts": {d: c[0] for d, c in zip(deps, counters)},
                "peak_in_flight": {d: c[1] for d, c in zip(deps, counters) if c[1] is not None}}
