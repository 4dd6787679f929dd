"""Toxiproxy's toxic types: their JSON shape, and what each one does to one direction of a connection.

A :class:`Toxic` is the shared definition the API manages. Every live connection runs one
:class:`ToxicStub` per toxic of its direction (Toxiproxy's ``ToxicStub``): the stub decides once per
connection whether the toxic applies (``toxicity``), keeps per-connection state, and is told when the
definition is updated or removed, so data held inside it is released at once (Toxiproxy's interrupt).

Units follow Toxiproxy: times in milliseconds (slicer ``delay`` in microseconds), ``rate`` in KB/s
with 1 KB = 1000 bytes, sizes in bytes.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from chaos.proxy.errors import (
    ApiError,
    bad_request_body,
    invalid_stream,
    invalid_toxic_type,
    toxic_already_exists,
)

UPSTREAM = "upstream"      # client -> server
DOWNSTREAM = "downstream"  # server -> client
STREAMS = (UPSTREAM, DOWNSTREAM)


@dataclass
class Chunk:
    data: bytes
    ts: float  # loop.time() when the proxy read it; latency counts from here, as in Toxiproxy


Emit = Callable[[Chunk], Awaitable[None]]


class LinkControl(Protocol):
    """What a stub may ask of the connection direction it sits in."""

    def close_from(self, stub: ToxicStub) -> None:
        """Close the stream at this stub: later toxics see end-of-stream, then the destination closes."""

    def reset_connection(self) -> None:
        """Abort both sockets of the connection with SO_LINGER 0, so the peers get a TCP RST."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as the API shows it: ``{"attributes", "name", "type", "stream", "toxicity"}``."""

    name: str
    type: str
    stream: str
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }

    @classmethod
    def from_json(cls, body: Any, taken: Container[str] = ()) -> Toxic:
        """Parse a create-toxic body, checking in Toxiproxy's order: shape, stream, type, name, attributes.

        Defaults as Toxiproxy: ``stream`` downstream, ``toxicity`` 1.0, ``name`` "<type>_<stream>",
        every attribute 0. Raises :class:`ApiError` (400 bad body / invalid stream / invalid toxic
        type, 409 when ``name`` is in ``taken``).
        """
        if not isinstance(body, dict):
            raise _cannot_unmarshal(json_kind(body), "Go value", "toxics.ToxicWrapper")
        name = _typed(body, "name", str, "", "ToxicWrapper")
        kind = _typed(body, "type", str, "", "ToxicWrapper")
        stream = _typed(body, "stream", str, DOWNSTREAM, "ToxicWrapper")
        toxicity = _toxicity(body, 1.0)
        if stream.lower() not in STREAMS:
            raise invalid_stream()
        stream = stream.lower()
        name = name or f"{kind}_{stream}"
        stub_type = TOXIC_TYPES.get(kind)
        if stub_type is None:
            raise invalid_toxic_type()
        if name in taken:
            raise toxic_already_exists()
        attributes = stub_type.parse_attributes(body.get("attributes"), dict.fromkeys(stub_type.ATTRIBUTES, 0))
        return cls(name=name, type=kind, stream=stream, toxicity=toxicity, attributes=attributes)

    def updated(self, body: Any) -> Toxic:
        """Apply an update body: ``attributes`` merge over the current ones, ``toxicity`` replaces.

        Other fields (name, type, stream) cannot change, as in Toxiproxy. Raises :class:`ApiError` 400.
        """
        if not isinstance(body, dict):
            raise _cannot_unmarshal(json_kind(body), "Go value", "struct")
        attributes = TOXIC_TYPES[self.type].parse_attributes(body.get("attributes"), dict(self.attributes))
        return Toxic(self.name, self.type, self.stream, _toxicity(body, self.toxicity), attributes)


class ToxicStub:
    """One toxic on one direction of one connection. Subclasses implement the type's behaviour."""

    GO_TYPE: ClassVar[str]
    ATTRIBUTES: ClassVar[dict[str, str]]  # attribute -> Go type, in Toxiproxy's JSON order (all default 0)

    def __init__(self, toxic: Toxic, link: LinkControl, rng: random.Random) -> None:
        self.toxic = toxic
        self.link = link
        self.rng = rng
        self.applies = rng.random() < toxic.toxicity  # decided per connection, like Toxiproxy's Run()
        self.attached = True
        self._waiters: set[asyncio.Future[bool]] = set()  # pauses in progress, woken by _release()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def parse_attributes(cls, raw: Any, into: dict[str, int]) -> dict[str, int]:
        if raw is None:
            return into
        if not isinstance(raw, dict):
            raise _cannot_unmarshal(json_kind(raw), "ToxicWrapper.attributes", f"*toxics.{cls.GO_TYPE}")
        for key, go_type in cls.ATTRIBUTES.items():
            value = raw.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _cannot_unmarshal(json_kind(value), f"{cls.GO_TYPE}.attributes.{key}", go_type)
            if isinstance(value, float) and not value.is_integer():
                raise _cannot_unmarshal(f"number {value}", f"{cls.GO_TYPE}.attributes.{key}", go_type)
            into[key] = int(value)
        return into

    def attr(self, name: str) -> int:
        return self.toxic.attributes[name]

    # -- lifecycle, driven by the link ---------------------------------------------------------
    def start(self) -> None:
        if self.applies:
            self.on_start()

    def update(self, toxic: Toxic) -> None:
        """New attributes/toxicity: release held data, re-decide toxicity, restart (like Toxiproxy)."""
        self._release()
        self.toxic = toxic
        self.applies = self.rng.random() < toxic.toxicity
        self.start()

    def remove(self) -> None:
        """The toxic was deleted: release held data and run the type's cleanup (call while still chained)."""
        self.attached = False
        self._release()
        if self.applies:
            self.on_remove()

    def dispose(self) -> None:
        """The connection is gone: stop timers, no side effects."""
        self.attached = False
        self._release()

    # -- data path --------------------------------------------------------------------------
    async def data(self, chunk: Chunk, emit: Emit) -> None:
        if self.applies and self.attached:
            await self.on_data(chunk, emit)
        else:
            await emit(chunk)

    async def eof(self) -> None:
        if self.applies and self.attached:
            await self.on_eof()

    # -- hooks for subclasses -----------------------------------------------------------------
    def on_start(self) -> None:
        pass

    def on_remove(self) -> None:
        pass

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def on_eof(self) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------------
    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the toxic is updated or removed (data must then flow)."""
        if not self.attached:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        # A future plus call_later rather than wait_for(): no task per pause, which slicer does per slice.
        timer = loop.call_later(max(seconds, 0.0), _resolve, waiter, True)
        self._waiters.add(waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    async def hold(self) -> None:
        """Wait until the toxic is updated or removed."""
        if not self.attached:
            return
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``seconds`` unless the toxic changes or the connection ends first."""

        def fire() -> None:
            self._timer = None
            action()

        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, fire)

    def _release(self) -> None:
        for waiter in self._waiters:
            _resolve(waiter, False)
        self._waiters.clear()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LatencyToxic(ToxicStub):
    """Delay each chunk by ``latency`` ± ``jitter`` ms, counted from when the proxy read it."""

    GO_TYPE = "LatencyToxic"
    ATTRIBUTES = {"latency": "int64", "jitter": "int64"}

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        delay_ms = self.attr("latency")
        jitter = self.attr("jitter")
        if jitter > 0:
            delay_ms += self.rng.randrange(2 * jitter) - jitter
        due = chunk.ts + delay_ms / 1000
        if await self.pause(due - asyncio.get_running_loop().time()):
            chunk.ts = due  # a second latency toxic adds on top of this one
        await emit(chunk)


class BandwidthToxic(ToxicStub):
    """Pass at most ``rate`` KB/s; chunks larger than 100 ms worth go out in 100 ms slices."""

    GO_TYPE = "BandwidthToxic"
    ATTRIBUTES = {"rate": "int64"}
    _debt_s = 0.0  # sleep owed; carries the timer error over to the next chunk like Toxiproxy

    def on_start(self) -> None:
        self._debt_s = 0.0

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        rate = self.attr("rate")
        if rate <= 0:
            # Toxiproxy never delivers at rate 0 (it loops on empty slices): hold until the toxic changes.
            await self.hold()
            await emit(chunk)
            return
        data = chunk.data
        self._debt_s += len(data) / (rate * 1000)
        slice_size = rate * 100
        loop = asyncio.get_running_loop()
        while len(data) > slice_size:  # bounded: shrinks by slice_size each turn
            if not await self.pause(0.1):
                await emit(Chunk(data, chunk.ts))
                return
            await emit(Chunk(data[:slice_size], chunk.ts))
            data = data[slice_size:]
            self._debt_s -= 0.1
        started = loop.time()
        if await self.pause(self._debt_s):
            self._debt_s -= loop.time() - started
        await emit(Chunk(data, chunk.ts))


class SlowCloseToxic(ToxicStub):
    """Hold end-of-stream for ``delay`` ms before the socket closes."""

    GO_TYPE = "SlowCloseToxic"
    ATTRIBUTES = {"delay": "int64"}

    async def on_eof(self) -> None:
        await self.pause(self.attr("delay") / 1000)


class TimeoutToxic(ToxicStub):
    """Drop all data; close the connection after ``timeout`` ms, or never when 0 (a blackhole).

    Removing it closes the connections it was blackholing (Toxiproxy's ``Cleanup``: their stream
    has lost data); new connections flow normally.
    """

    GO_TYPE = "TimeoutToxic"
    ATTRIBUTES = {"timeout": "int64"}

    def on_start(self) -> None:
        if self.attr("timeout") > 0:
            self.after(self.attr("timeout") / 1000, lambda: self.link.close_from(self))

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        return  # dropped on the floor, as Toxiproxy has done since 2.1.1

    def on_remove(self) -> None:
        self.link.close_from(self)


class ResetPeerToxic(ToxicStub):
    """On the first data (or end-of-stream), wait ``timeout`` ms, then reset both sockets (TCP RST)."""

    GO_TYPE = "ResetToxic"
    ATTRIBUTES = {"timeout": "int64"}
    _armed = False

    def on_start(self) -> None:
        self._armed = False

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        if self._armed:
            return  # Toxiproxy stops reading once armed: nothing more gets through
        self._armed = True
        if self.attr("timeout") <= 0:
            self.link.reset_connection()
        else:
            self.after(self.attr("timeout") / 1000, self.link.reset_connection)

    async def on_eof(self) -> None:
        if not self._armed:
            self._armed = True
            await self.pause(self.attr("timeout") / 1000)
            if self.attached:
                self.link.reset_connection()


class SlicerToxic(ToxicStub):
    """Cut each chunk into ~``average_size`` ± ``size_variation`` byte pieces, ``delay`` µs apart."""

    GO_TYPE = "SlicerToxic"
    ATTRIBUTES = {"average_size": "int", "size_variation": "int", "delay": "int"}

    def cuts(self, size: int) -> list[tuple[int, int]]:
        """Toxiproxy's halving split, made total: sizes < 1 and variations ≥ the piece are clamped."""
        average = max(1, self.attr("average_size"))
        variation = max(0, self.attr("size_variation"))
        pieces: list[tuple[int, int]] = []
        pending = [(0, size)]
        while pending:  # bounded: every split makes both halves strictly smaller
            start, end = pending.pop()
            if (end - start) - average <= variation or end - start <= 1:
                pieces.append((start, end))
                continue
            mid = start + (end - start) // 2
            if variation > 0:
                mid += self.rng.randrange(2 * variation) - variation
            mid = min(max(mid, start + 1), end - 1)
            pending.append((mid, end))
            pending.append((start, mid))
        return pieces

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        delay_s = self.attr("delay") / 1_000_000
        for start, end in self.cuts(len(chunk.data)):
            await emit(Chunk(chunk.data[start:end], chunk.ts))
            if not await self.pause(delay_s):
                if chunk.data[end:]:
                    await emit(Chunk(chunk.data[end:], chunk.ts))
                return


class LimitDataToxic(ToxicStub):
    """Pass the first ``bytes`` bytes of the stream, then close the connection."""

    GO_TYPE = "LimitDataToxic"
    ATTRIBUTES = {"bytes": "int64"}
    _sent = 0  # per connection; survives updates like Toxiproxy's stub state

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        limit = self.attr("bytes")
        data = chunk.data[: max(0, limit - self._sent)]
        if data:
            self._sent += len(data)
            await emit(Chunk(data, chunk.ts))
        if limit - self._sent <= 0:
            self.link.close_from(self)


class NoopToxic(ToxicStub):
    """Pass everything through unchanged (Toxiproxy's ``noop``: a placeholder, or to test the plumbing)."""

    GO_TYPE = "NoopToxic"
    ATTRIBUTES: ClassVar[dict[str, str]] = {}


TOXIC_TYPES: dict[str, type[ToxicStub]] = {
    "noop": NoopToxic,
    "latency": LatencyToxic,
    "bandwidth": BandwidthToxic,
    "slow_close": SlowCloseToxic,
    "timeout": TimeoutToxic,
    "reset_peer": ResetPeerToxic,
    "slicer": SlicerToxic,
    "limit_data": LimitDataToxic,
}


def _resolve(waiter: asyncio.Future[bool], completed: bool) -> None:
    if not waiter.done():
        waiter.set_result(completed)


def json_kind(value: Any) -> str:
    """The JSON type name of a decoded value, as Go's unmarshal errors spell it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_GO_NAMES = {str: "string", bool: "bool"}


def _cannot_unmarshal(what: str, target: str, go_type: str) -> ApiError:
    """Go's encoding/json wording, which Toxiproxy wraps as "bad request body: …"."""
    where = target if target == "Go value" else f"Go struct field {target}"
    return bad_request_body(f"json: cannot unmarshal {what} into {where} of type {go_type}")


def _typed(body: dict[str, Any], key: str, kind: type, default: Any, go_struct: str) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _cannot_unmarshal(json_kind(value), f"{go_struct}.{key}", _GO_NAMES[kind])
    return value


def _toxicity(body: dict[str, Any], default: float) -> float:
    value = body.get("toxicity")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _cannot_unmarshal(json_kind(value), "ToxicWrapper.toxicity", "float32")
    return float(value)


__all__ = [
    "Chunk", "DOWNSTREAM", "Emit", "LinkControl", "STREAMS", "TOXIC_TYPES", "Toxic",
    "ToxicStub", "UPSTREAM",
]
