"""A named TCP proxy: one listener, one upstream, its toxics and its live connections (Toxiproxy's Proxy)."""
from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

from chaos.proxy.errors import listen_failed, toxic_not_found
from chaos.proxy.link import Connection
from chaos.proxy.toxics import STREAMS, Toxic

log = logging.getLogger("chaos.proxy")


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``":port"`` → (host, port). Raises ValueError with Go's wording."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {address}: too many colons in address")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {address}: invalid port")
    return host, int(port)


def join_host_port(sockname: tuple[Any, ...]) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Proxy:
    """Listens on ``listen``, forwards each accepted connection to ``upstream`` through the toxics.

    ``listen`` may use port 0; once started it holds the address actually bound, as Toxiproxy reports it.
    """

    def __init__(
        self,
        name: str,
        listen: str,
        upstream: str,
        *,
        rng: random.Random,
        seed: int | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self._rng = rng
        self._seed = seed
        self._draws: dict[str, random.Random] = {}  # seeded: each toxic's own stream (see _rng_for)
        self._connect_timeout_s = connect_timeout_s
        self._toxics: dict[str, Toxic] = {}
        self._server: asyncio.Server | None = None
        # insertion-ordered (a dict, not a set): a toxic added or updated draws for live connections oldest
        # first, so a seeded run assigns the same draws to the same connections
        self._connections: dict[Connection, None] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        # Not in Toxiproxy's API (served on /__stats__): what the toxics did, for drills to verify.
        self.stats = {"connections": 0, "resets": 0}

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics()],
        }

    def _count_reset(self) -> None:
        self.stats["resets"] += 1

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- listener ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and accept. Raises :class:`ApiError` 500 with Go's ``listen tcp …`` message on failure."""
        if self.enabled:
            return
        try:
            host, port = split_host_port(self.listen)
        except ValueError as exc:
            raise listen_failed("", str(exc)) from exc
        loop = asyncio.get_running_loop()
        try:
            family, kind, proto, _, addr = (
                await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            )[0]
        except OSError as exc:
            raise listen_failed(self.listen, f"lookup {host}: {exc.strerror or exc}") from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._on_client, sock=sock)
        except OSError as exc:
            sock.close()
            raise listen_failed(self.listen, f"bind: {(exc.strerror or str(exc)).lower()}") from exc
        self.listen = join_host_port(sock.getsockname())
        self.enabled = True
        log.info("proxy %s listening on %s -> %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        """Stop listening and close every live connection (clients see the socket close)."""
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        assert server is not None
        server.close()
        for connection in list(self._connections):
            connection.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await server.wait_closed()
        if handlers:
            await asyncio.wait(handlers)
        log.info("proxy %s stopped", self.name)

    async def update(self, *, listen: str, upstream: str, enabled: bool) -> None:
        """Toxiproxy's update: a new address restarts the proxy (dropping connections); then (en|dis)able."""
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled and self.enabled:
            await self.stop()

    async def _on_client(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection: Connection | None = None
        try:
            host, port = split_host_port(self.upstream)
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), self._connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                log.warning("proxy %s: unable to open connection to upstream %s: %s", self.name, self.upstream, exc)
                return
            connection = Connection((client_reader, client_writer), upstream, self.toxics(), self._rng_for,
                                    on_reset=self._count_reset)
            self._connections[connection] = None
            self.stats["connections"] += 1
            await connection.wait()
        except asyncio.CancelledError:
            # stop() cancels handlers. End normally: Python 3.11's start_server callback calls
            # task.exception() on a cancelled task and logs a spurious error.
            pass
        finally:
            if connection is not None:
                connection.close()
                self._connections.pop(connection, None)
            elif not client_writer.is_closing():
                client_writer.close()
            self._handlers.discard(task)

    # -- toxics ------------------------------------------------------------------------------------
    def toxics(self) -> list[Toxic]:
        """Upstream toxics first, then downstream, each in the order added (Toxiproxy's listing)."""
        return [t for stream in STREAMS for t in self._toxics.values() if t.stream == stream]

    def get_toxic(self, name: str) -> Toxic:
        toxic = self._toxics.get(name)
        if toxic is None:
            raise toxic_not_found()
        return toxic

    def _rng_for(self, toxic: Toxic) -> random.Random:
        """Where ``toxic`` draws (toxicity, jitter, slice sizes): unseeded, the server's one stream; seeded, a
        stream of its own, so its draws are the same whatever other toxics drew before (order of drills)."""
        return self._draws.get(toxic.name, self._rng)

    def add_toxic(self, body: Any) -> Toxic:
        """Add a toxic from its JSON body; live connections get it for their next chunk. Raises ApiError."""
        toxic = Toxic.from_json(body, taken=self._toxics)
        if self._seed is not None:
            self._draws[toxic.name] = SeededDraws(f"{self._seed}:{self.name}:{toxic.name}")
        self._toxics[toxic.name] = toxic
        for connection in self._connections:
            connection.add_toxic(toxic)
        return toxic

    def update_toxic(self, name: str, body: Any) -> Toxic:
        toxic = self.get_toxic(name).updated(body)
        self._toxics[name] = toxic
        for connection in self._connections:
            connection.update_toxic(toxic)
        return toxic

    def remove_toxic(self, name: str) -> None:
        toxic = self.get_toxic(name)
        del self._toxics[name]
        for connection in list(self._connections):
            connection.remove_toxic(toxic)
        self._draws.pop(name, None)

    def reset_toxics(self) -> None:
        for name in list(self._toxics):
            self.remove_toxic(name)


class SeededDraws(random.Random):
    """A seeded toxic's own stream. Its toxicity draws (``random()``: nothing else calls it) walk a golden-ratio
    (Weyl) sequence from a seeded start instead of independent draws, so toxicity p is realised at its rate in
    every run of draws, not only on average: at 0.3, one to three of any 6 draws apply and never 5 in a row
    miss (independent draws miss 6 in a row 12% of the time: a drill whose fault never happened). Like
    Chaos Mesh's ``fixed-percent`` beside its random modes. Jitter and slice sizes (``getrandbits``) stay
    pseudo-random from the same seed."""

    _STEP = (5 ** 0.5 - 1) / 2  # the golden ratio's fraction: the most evenly spread rotation of the circle

    def __init__(self, seed: str) -> None:
        super().__init__(seed)
        self._next = super().random()

    def random(self) -> float:
        value = self._next
        self._next = (value + self._STEP) % 1.0
        return value

    def getrandbits(self, k: int) -> int:  # defined here so randrange keeps using it, not random()
        return super().getrandbits(k)


__all__ = ["Proxy", "SeededDraws", "join_host_port", "split_host_port"]
