"""One proxied TCP connection: two :class:`Link` s (client→upstream, upstream→client) through toxics.

Mirrors Toxiproxy's ``ToxicLink``: a reader stamps each chunk with its arrival time and queues it
(so latency toxics pipeline instead of adding up per chunk), a pump runs it through the direction's
current chain of stubs and writes it out. End-of-stream runs through the chain too (``slow_close``
holds it), then the destination socket is closed outright — like Toxiproxy there is no half-close:
the other direction then sees end-of-stream on that socket and closes the other side.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import struct
from typing import Callable

from chaos.proxy.toxics import DOWNSTREAM, STREAMS, TOXIC_TYPES, UPSTREAM, Chunk, Toxic, ToxicStub

log = logging.getLogger("chaos.proxy")

READ_SIZE = 32 * 1024  # Go's io.Copy buffer, so chunking resembles Toxiproxy's
QUEUE_CHUNKS = 1024    # Toxiproxy's latency toxic buffers 1024 chunks; beyond that, TCP backpressure


class Link:
    """One direction of one connection: source socket → toxic stubs → destination socket."""

    def __init__(
        self,
        connection: Connection,
        direction: str,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        toxics: list[Toxic],
        rng_for: Callable[[Toxic], random.Random],
    ) -> None:
        self.direction = direction
        self._connection = connection
        self._source = source
        self._dest = dest
        self._rng_for = rng_for  # where each toxic draws (the proxy's: one stream per toxic when seeded)
        self._chain: list[ToxicStub] = []
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        for toxic in toxics:
            self.add_toxic(toxic)

    # -- chain changes (synchronous: they take effect for the next chunk) ------------------------
    def add_toxic(self, toxic: Toxic) -> None:
        stub = TOXIC_TYPES[toxic.type](toxic, self, self._rng_for(toxic))
        self._chain.append(stub)
        stub.start()

    def update_toxic(self, toxic: Toxic) -> None:
        for stub in self._chain:
            if stub.toxic.name == toxic.name:
                stub.update(toxic)

    def remove_toxic(self, name: str) -> None:
        for stub in list(self._chain):
            if stub.toxic.name == name:
                stub.remove()  # may close the stream from this position: still chained here
                self._chain.remove(stub)

    # -- LinkControl ------------------------------------------------------------------------------
    def close_from(self, stub: ToxicStub) -> None:
        if self._closing:
            return
        self._closing = True
        later = self._chain[self._chain.index(stub) + 1:] if stub in self._chain else list(self._chain)
        for task in (self._reader, self._pump):
            if task is not None:
                task.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._close_after(later))

    def reset_connection(self) -> None:
        self._connection.reset()

    # -- running --------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._pump = loop.create_task(self._drive())
        try:
            await asyncio.wait([self._pump])
            if not self._pump.cancelled() and self._pump.exception() is not None:
                raise self._pump.exception()  # type: ignore[misc]
            if self._closer is not None:
                await self._closer
        finally:
            for task in (self._reader, self._pump, self._closer):
                if task is not None:
                    task.cancel()
            for stub in self._chain:
                stub.dispose()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # until end-of-stream: each turn consumes bytes from the peer
            try:
                data = await self._source.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""  # a reset source is an ended source, as for Toxiproxy's io.Copy
            if not data:
                await self._queue.put(None)
                return
            await self._queue.put(Chunk(data, loop.time()))

    async def _drive(self) -> None:
        try:
            while True:  # one turn per queued chunk; ends at the end-of-stream marker
                chunk = await self._queue.get()
                if chunk is None:
                    break
                await self._through(tuple(self._chain), 0, chunk)
        except (ConnectionError, OSError) as exc:
            log.debug("%s link: destination write failed: %s", self.direction, exc)
            self._closing = True
            self._connection.close()
            return
        if self._closing:
            return
        self._closing = True
        for stub in tuple(self._chain):
            await stub.eof()
        self._dest.close()

    async def _through(self, chain: tuple[ToxicStub, ...], index: int, chunk: Chunk) -> None:
        if index == len(chain):
            if self._dest.is_closing():
                raise ConnectionResetError("destination already closed")
            self._dest.write(chunk.data)
            await self._dest.drain()
            return
        await chain[index].data(chunk, functools.partial(self._through, chain, index + 1))

    async def _close_after(self, later: list[ToxicStub]) -> None:
        for stub in later:
            await stub.eof()
        self._dest.close()


class Connection:
    """A client socket and its upstream socket, joined by an upstream and a downstream :class:`Link`."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        toxics: list[Toxic],
        rng_for: Callable[[Toxic], random.Random],
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self._writers = (client[1], upstream[1])
        self._on_reset = on_reset  # the proxy counts resets (GET /__stats__): drills check a reset fired
        by_stream = {s: [t for t in toxics if t.stream == s] for s in STREAMS}
        self.links = {
            UPSTREAM: Link(self, UPSTREAM, client[0], upstream[1], by_stream[UPSTREAM], rng_for),
            DOWNSTREAM: Link(self, DOWNSTREAM, upstream[0], client[1], by_stream[DOWNSTREAM], rng_for),
        }
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(link.run()) for link in self.links.values()]

    async def wait(self) -> None:
        """Until both directions have ended."""
        await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("proxy link failed", exc_info=task.exception())

    def add_toxic(self, toxic: Toxic) -> None:
        self.links[toxic.stream].add_toxic(toxic)

    def update_toxic(self, toxic: Toxic) -> None:
        self.links[toxic.stream].update_toxic(toxic)

    def remove_toxic(self, toxic: Toxic) -> None:
        self.links[toxic.stream].remove_toxic(toxic.name)

    def close(self) -> None:
        """Close both sockets (FIN) and stop both directions."""
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            if not writer.is_closing():
                writer.close()

    def reset(self) -> None:
        """Abort both sockets with SO_LINGER 0: the kernel answers with RST instead of FIN."""
        if self._on_reset is not None:
            self._on_reset()
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # already closed by the peer: abort() below is all that is left to do
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
