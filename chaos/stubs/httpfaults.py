"""Switchable HTTP-level faults for aiohttp stand-ins, and the small server base they share.

A :class:`FaultInjector` holds one :class:`~chaos.stubs.faults.Faults`, draws a :class:`FaultPlan` per
request (with a seeded RNG, so ``error_rate`` runs are reproducible), applies the generic faults in an
aiohttp middleware and serves the control routes:

- ``GET /__faults__`` the current faults as JSON; ``PUT`` replaces them (fields left out get their
  defaults), ``PATCH`` merges; an unknown field or a bad value → 400; ``DELETE`` clears them.
  Clearing (or switching off ``hang`` / ``stream_stall_after``) releases the requests held by them.
- ``GET /__stats__`` per-route counters (``requests``, ``faulted``, ``by_fault``, ``peak_in_flight`` and
  ``peak_in_flight_by_model``: the most requests served at once); ``DELETE`` resets them.

Order applied to a request (control routes are never faulted): record → draw → count → latency →
reset | hang | status | malformed. ``error_rate`` decides, once per request, whether the faults other than latency
apply. A released hang serves the request normally; a hang released by ``stop()`` drops the connection.
Stream faults (``stream_cut_after`` / ``stream_stall_after``) only mean something to a stand-in that
streams: the plan is left in ``request[PLAN_KEY]`` for its handler, see :func:`plan_of`.

:class:`StubServer` wraps the injector with an app, ``start()``/``stop()`` and a ``python -m`` entry
point; the fake Anthropic and embeddings servers subclass it, and a REST side of another stand-in can
either subclass it or mount ``injector.middleware`` + ``injector.control_routes()`` in its own app.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import signal
import sys
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Sequence

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from chaos.stubs.faults import Faults
from resilience.waits import wait_event

CONTROL_PATHS = frozenset({"/__faults__", "/__stats__"})
# Direct mutation of ``injector.faults`` (without set/clear) is noticed by held requests this often (s).
_RECHECK_S = 0.1
_FAULTS_ADAPTER: TypeAdapter[Faults] = TypeAdapter(Faults)

ErrorBody = Callable[[web.Request, int], dict[str, Any]]
RequestHook = Callable[[web.Request], Awaitable[Any]]
ResponseHook = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What the faults do to one request (drawn once, when it arrives)."""

    latency_s: float = 0.0
    status: int | None = None
    retry_after_s: float | None = None
    hang: bool = False
    reset: bool = False
    malformed: bool = False
    stream_cut_after: int | None = None
    stream_stall_after: int | None = None
    error_message: str | None = None
    first_token_delay_s: float = 0.0
    event_interval_s: float = 0.0
    no_stop: bool = False
    malformed_after: int | None = None
    reject_prefill: bool = False
    source: Faults | None = field(default=None, compare=False, repr=False)  # the Faults it was drawn from

    @property
    def kinds(self) -> list[str]:
        """Names of the faults in this plan, for the stats."""
        return [name for name, on in (
            ("latency", self.latency_s > 0), ("reset", self.reset), ("hang", self.hang),
            ("status", self.status is not None), ("malformed", self.malformed),
            ("stream_cut", self.stream_cut_after is not None),
            ("stream_stall", self.stream_stall_after is not None),
            ("first_token_delay", self.first_token_delay_s > 0), ("no_stop", self.no_stop),
            ("malformed_event", self.malformed_after is not None), ("reject_prefill", self.reject_prefill)) if on]


NO_FAULT = FaultPlan()
PLAN_KEY: web.RequestKey[FaultPlan] = web.RequestKey("fault_plan", FaultPlan)


def plan_of(request: web.Request) -> FaultPlan:
    """The plan drawn for ``request`` by the middleware (``NO_FAULT`` outside it)."""
    return request.get(PLAN_KEY, NO_FAULT)


def retry_after_headers(retry_after_s: float | None) -> dict[str, str]:
    """``retry-after`` (whole seconds, rounded up, as RFC 9110 wants) and ``retry-after-ms``."""
    if retry_after_s is None:
        return {}
    whole = int(retry_after_s) if float(retry_after_s).is_integer() else int(retry_after_s) + 1
    return {"retry-after": str(max(whole, 0)), "retry-after-ms": str(max(int(round(retry_after_s * 1000)), 0))}


def default_error_body(request: web.Request, status: int) -> dict[str, Any]:
    return {"error": {"status": status, "message": f"injected fault: HTTP {status}"}}


async def _never(request: web.Request) -> Any:
    return None


async def broken_json_response(request: web.Request) -> web.StreamResponse:
    # Truncated mid-object: valid UTF-8, invalid JSON, the right content type.
    return web.Response(status=200, body=b'{"id": "broken", "data": [{"emb', content_type="application/json")


@dataclass
class RouteStats:
    requests: int = 0
    faulted: int = 0
    by_fault: Counter[str] = field(default_factory=Counter)
    # Requests being served right now and the most at once since the last reset, overall and per model
    # (what a bulkhead in front of this upstream must bound).
    in_flight: Counter[str] = field(default_factory=Counter)
    peak_in_flight: Counter[str] = field(default_factory=Counter)

    def enter(self, model: str | None) -> None:
        for key in ("", *([model] if model else [])):
            self.in_flight[key] += 1
            self.peak_in_flight[key] = max(self.peak_in_flight[key], self.in_flight[key])

    def leave(self, model: str | None) -> None:
        for key in ("", *([model] if model else [])):
            self.in_flight[key] -= 1

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "faulted": self.faulted, "by_fault": dict(self.by_fault),
                "peak_in_flight": self.peak_in_flight[""],
                "peak_in_flight_by_model": {k: v for k, v in self.peak_in_flight.items() if k}}


def route_key(request: web.Request) -> str:
    """``"POST /v1/messages"`` — method and the route's pattern (not the concrete path)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else 'unmatched'}"


class FaultInjector:
    """One switchable :class:`Faults` applied to an aiohttp app, with its control routes and stats.

    Hooks (all optional) let a stand-in speak its own dialect:
    ``error_body(request, status)`` → the JSON body sent with an injected status;
    ``request_model(request)`` → the model a request is for (``Faults.models`` scoping; None = unknown,
    and a model-scoped fault then does not apply); ``is_streaming(request)`` → True if the handler
    answers with SSE and will apply stream faults itself (it also gets ``status`` when
    ``stream_cut_after`` is set, to send it as a mid-stream error); ``malformed_response(request)`` →
    the broken 200 answer; ``on_request(request)`` → called for every faultable request before faults.
    """

    def __init__(self, faults: Faults | None = None, *, seed: int = 0,
                 error_body: ErrorBody = default_error_body,
                 request_model: RequestHook = _never, is_streaming: RequestHook = _never,
                 malformed_response: ResponseHook = broken_json_response,
                 on_request: RequestHook = _never,
                 error_headers: Callable[[web.Request], dict[str, str]] = lambda request: {}) -> None:
        self.faults = faults if faults is not None else Faults()
        # Faults of one model each (LLM stand-in), checked before ``faults``: many faulty models at once.
        self.model_faults: dict[str, Faults] = {}
        self.rng = random.Random(seed)
        self.stats: dict[str, RouteStats] = {}
        self._error_body = error_body
        self._request_model = request_model
        self._is_streaming = is_streaming
        self._malformed_response = malformed_response
        self._on_request = on_request
        self._error_headers = error_headers
        self._changed = asyncio.Event()
        self._closing = False

    # -- switching faults -------------------------------------------------------------------------
    def set(self, **changes: Any) -> None:
        """Merge ``changes`` into the faults. Raises ValueError on an unknown field or a bad value."""
        merged = {**self.faults.to_dict(), **changes}
        self.replace(**merged)

    @staticmethod
    def _validated(values: dict[str, Any]) -> Faults:
        """``values`` as a :class:`Faults` (omitted fields get defaults). Raises ValueError."""
        known = {f.name for f in fields(Faults)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {unknown}")
        try:
            new = _FAULTS_ADAPTER.validate_python(values)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        if not 0.0 <= new.error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        return new

    def replace(self, **values: Any) -> None:
        """Replace the faults (omitted fields get defaults). Raises ValueError like :meth:`set`."""
        self.faults.update(**self._validated(values).to_dict())
        self.notify()

    def clear(self) -> None:
        """Remove every fault (the per-model ones too) and release held requests."""
        self.faults.clear()
        for f in self.model_faults.values():
            f.clear()
        self.model_faults = {}
        self.notify()

    def set_model(self, model: str, **values: Any) -> None:
        """Replace the faults of ``model`` alone (omitted fields get defaults). Raises ValueError."""
        new = self._validated(values)
        old = self.model_faults.get(model)
        if old is not None:
            old.update(**new.to_dict())  # held requests of this model see the change
        else:
            self.model_faults[model] = new
        self.notify()

    def notify(self) -> None:
        """Wake held requests so they re-check the faults (call after mutating ``faults`` directly)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Release every held request for good (they drop their connections); used on stop."""
        self._closing = True
        self.notify()

    @property
    def closing(self) -> bool:
        return self._closing

    async def hold_while(self, held: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Wait while ``held()`` is true (and, if given, at most ``timeout_s`` seconds).

        Returns True if released because the server is stopping, False otherwise.
        """
        loop = asyncio.get_running_loop()
        until = None if timeout_s is None else loop.time() + timeout_s
        while held() and not self._closing:
            wait_s = _RECHECK_S if until is None else min(_RECHECK_S, until - loop.time())
            if wait_s <= 0:
                break
            await wait_event(self._changed, wait_s)
        return self._closing

    # -- drawing and applying ---------------------------------------------------------------------
    async def draw(self, request: web.Request) -> FaultPlan:
        """The plan for ``request`` from the current faults (model scoping and ``error_rate`` applied)."""
        f = self.faults
        if self.model_faults:
            f = self.model_faults.get(await self._request_model(request), f)
        if not f.active:
            return NO_FAULT
        if f.models:
            model = await self._request_model(request)
            if model not in f.models:
                return NO_FAULT
        if f.times is not None and f.times <= 0:
            return NO_FAULT
        hit = f.error_rate >= 1.0 or self.rng.random() < f.error_rate
        if f.times is not None:
            f.times -= 1
        if not hit:
            return FaultPlan(latency_s=f.latency_s, event_interval_s=f.event_interval_s, source=f)
        return FaultPlan(latency_s=f.latency_s, status=f.status, retry_after_s=f.retry_after_s, hang=f.hang,
                         reset=f.reset, malformed=f.malformed, stream_cut_after=f.stream_cut_after,
                         stream_stall_after=f.stream_stall_after, error_message=f.error_message,
                         first_token_delay_s=f.first_token_delay_s, event_interval_s=f.event_interval_s,
                         no_stop=f.no_stop, malformed_after=f.malformed_after, reject_prefill=f.reject_prefill,
                         source=f)

    def _count(self, request: web.Request, kinds: Sequence[str]) -> RouteStats:
        st = self.stats.setdefault(route_key(request), RouteStats())
        st.requests += 1
        if kinds:
            st.faulted += 1
            st.by_fault.update(kinds)
        return st

    def error_response(self, request: web.Request, status: int, retry_after_s: float | None) -> web.Response:
        """The stand-in's JSON error for ``status``, with Retry-After headers if set."""
        return web.json_response(self._error_body(request, status), status=status,
                                 headers={**retry_after_headers(retry_after_s), **self._error_headers(request)})

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in CONTROL_PATHS:
            return await handler(request)
        await self._on_request(request)
        plan = await self.draw(request)
        streaming = bool(await self._is_streaming(request)) if plan is not NO_FAULT else False
        if not streaming:
            plan = dataclasses.replace(plan, stream_cut_after=None, stream_stall_after=None, no_stop=False,
                                       malformed_after=None, first_token_delay_s=0.0, event_interval_s=0.0)
        request[PLAN_KEY] = plan
        st = self._count(request, plan.kinds)
        model = await self._request_model(request)
        st.enter(model)
        try:
            return await self._serve(request, handler, plan, streaming)
        finally:
            st.leave(model)

    async def _serve(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     plan: FaultPlan, streaming: bool) -> web.StreamResponse:
        if plan.latency_s > 0 and (await self.hold_while(lambda: not client_gone(request), plan.latency_s)
                                   or client_gone(request)):
            return drop_connection(request)  # stopping, or the client gave up waiting (no longer in flight)
        if plan.reset:
            return drop_connection(request)
        if plan.hang:
            source = plan.source or self.faults
            if await self.hold_while(lambda: source.hang):
                return drop_connection(request)
            return await handler(request)
        # A streaming handler turns status + stream_cut_after into a mid-stream error event.
        if plan.status is not None and not (streaming and plan.stream_cut_after is not None):
            return self.error_response(request, plan.status, plan.retry_after_s)
        if plan.malformed:
            return await self._malformed_response(request)
        return await handler(request)

    # -- control routes ---------------------------------------------------------------------------
    def control_routes(self) -> list[web.RouteDef]:
        return [web.get("/__faults__", self._get_faults), web.put("/__faults__", self._put_faults),
                web.patch("/__faults__", self._patch_faults), web.delete("/__faults__", self._delete_faults),
                web.get("/__stats__", self._get_stats), web.delete("/__stats__", self._delete_stats)]

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def _change_faults(self, request: web.Request, apply: Callable[..., None]) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object of Faults fields"}, status=400)
        try:
            apply(**body)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.to_dict())

    async def _put_faults(self, request: web.Request) -> web.Response:
        model = request.query.get("model")  # PUT /__faults__?model=M: that model's faults alone
        if model:
            return await self._change_faults(request, lambda **v: self.set_model(model, **v))
        return await self._change_faults(request, self.replace)

    async def _patch_faults(self, request: web.Request) -> web.Response:
        return await self._change_faults(request, self.set)

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.clear()
        return web.json_response(self.faults.to_dict())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({k: v.to_dict() for k, v in sorted(self.stats.items())})

    async def _delete_stats(self, request: web.Request) -> web.Response:
        self.stats.clear()
        return web.json_response({})


class _ConnectionDropped(web.StreamResponse):
    """Stands for "no answer": the transport is already gone, so aiohttp writes nothing."""


def client_gone(request: web.Request) -> bool:
    """The client closed the connection (e.g. its timeout ended the call)."""
    return request.transport is None or request.transport.is_closing()


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket without an answer (the client sees a reset / server disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return _ConnectionDropped()


@dataclass
class RecordedRequest:
    """One request as a stand-in saw it (before faults were applied)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    model: str | None = None
    stream: bool = False

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


class StubServer:
    """Base of the HTTP stand-ins: an aiohttp app with a :class:`FaultInjector` in front.

    Subclasses implement :meth:`routes` and may override the hooks (``error_body``, ``request_model``,
    ``is_streaming``, ``malformed_response``). Every faultable request is recorded in ``requests``
    (model and stream flag filled in from the hooks) and counted per model in ``model_counts``.
    """

    name: ClassVar[str] = "stub"
    keep_requests: ClassVar[int] = 1000

    def __init__(self, *, faults: Faults | None = None, seed: int = 0) -> None:
        self.injector = FaultInjector(faults, seed=seed, error_body=self.error_body,
                                      request_model=self.request_model, is_streaming=self.is_streaming,
                                      malformed_response=self.malformed_response, on_request=self._record,
                                      error_headers=self.error_headers)
        # The most recent requests only: a drill or bench drives thousands through a stand-in.
        self.requests: deque[RecordedRequest] = deque(maxlen=self.keep_requests)
        self.requests_total = 0
        self.model_counts: Counter[str] = Counter()
        self._request_seen = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"

    # -- to override ------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def error_body(self, request: web.Request, status: int) -> dict[str, Any]:
        return default_error_body(request, status)

    def error_headers(self, request: web.Request) -> dict[str, str]:
        """Extra headers of an injected error answer (e.g. a request id)."""
        return {}

    async def request_model(self, request: web.Request) -> str | None:
        body = await json_body(request)
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    async def is_streaming(self, request: web.Request) -> bool:
        return False

    async def malformed_response(self, request: web.Request) -> web.StreamResponse:
        return await broken_json_response(request)

    # -- state ------------------------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @property
    def stats(self) -> dict[str, RouteStats]:
        return self.injector.stats

    def set_faults(self, **changes: Any) -> None:
        """Merge fault fields (e.g. ``status=503, retry_after_s=2``). Raises ValueError on unknown fields."""
        self.injector.set(**changes)

    def faults_of(self, model: str) -> Faults:
        """The faults requests for ``model`` get (its own, else the global ones)."""
        return self.injector.model_faults.get(model, self.injector.faults)

    def set_model_faults(self, model: str, **values: Any) -> None:
        """Faults for requests naming ``model`` only (several models can each have their own)."""
        self.injector.set_model(model, **values)

    def clear_faults(self) -> None:
        """Remove every fault; held (hung/stalled) requests are released and served."""
        self.injector.clear()

    async def _record(self, request: web.Request) -> None:
        model = await self.request_model(request)
        self.requests.append(RecordedRequest(
            method=request.method, path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()}, body=await json_body(request),
            model=model, stream=bool(await self.is_streaming(request))))
        self.requests_total += 1
        if model is not None:
            self.model_counts[model] += 1
        self._request_seen.set()
        self._request_seen = asyncio.Event()

    async def wait_for_requests(self, n: int) -> None:
        """Return once ``n`` requests in total have arrived (wrap it in your own timeout)."""
        while self.requests_total < n:
            await self._request_seen.wait()

    # -- lifecycle --------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The app (faults middleware + control routes + :meth:`routes`); usable with aiohttp test servers."""
        app = web.Application(middlewares=[self.injector.middleware], client_max_size=32 * 1024 * 1024)
        app.add_routes(self.injector.control_routes())
        app.add_routes(self.routes())
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "StubServer":
        """Serve on ``host:port`` (port 0 = pick a free one; read it back from :attr:`port`)."""
        runner = web.AppRunner(self.make_app(), handler_cancellation=True, shutdown_timeout=1.0,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Release held requests (their connections are dropped) and stop serving."""
        self.injector.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "StubServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} stand-in is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    # -- python -m --------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add stand-in specific command-line options (override, call super)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, faults: Faults) -> "StubServer":
        """Build the stand-in from parsed options (override when :meth:`add_arguments` adds some)."""
        return cls(faults=faults, seed=args.seed)

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> int:
        """``python -m`` entry: serve until SIGINT/SIGTERM; prints ``{"name", "url", "port"}`` once up."""
        parser = argparse.ArgumentParser(prog=f"python -m {cls.__module__}", description=cls.__doc__)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
        parser.add_argument("--seed", type=int, default=0, help="seed for error_rate draws")
        parser.add_argument("--faults", default="{}", help='initial faults as JSON, e.g. \'{"status": 503}\'')
        parser.add_argument("--port-file", default=None, help="write the bound port here once listening")
        cls.add_arguments(parser)
        args = parser.parse_args(argv)
        faults = Faults()
        try:
            FaultInjector(faults).replace(**json.loads(args.faults))
        except ValueError as exc:
            parser.error(f"--faults: {exc}")
        return asyncio.run(cls._serve(args, faults))

    @classmethod
    async def _serve(cls, args: argparse.Namespace, faults: Faults) -> int:
        server = cls.from_args(args, faults)
        await server.start(args.host, args.port)
        if args.port_file:
            await asyncio.to_thread(Path(args.port_file).write_text, f"{server.port}\n", encoding="utf-8")
        print(json.dumps({"name": cls.name, "url": server.url, "port": server.port}), flush=True)
        await serve_until_signalled(server.stop)
        print(f"{cls.name} stand-in stopped", file=sys.stderr)
        return 0


async def serve_until_signalled(stop_server: Callable[[], Awaitable[Any]]) -> None:
    """Wait for SIGINT/SIGTERM, then ``await stop_server()`` (also when the wait is cancelled)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_server()


_BODY_KEY: web.RequestKey[Any] = web.RequestKey("stub_json_body", object)


async def json_body(request: web.Request) -> Any:
    """The request's JSON body, parsed once per request (None if absent or not JSON)."""
    if _BODY_KEY not in request:
        body: Any = None
        if request.can_read_body:
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
        request[_BODY_KEY] = body
    return request[_BODY_KEY]
