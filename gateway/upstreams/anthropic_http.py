"""The Anthropic Messages API over raw HTTP, for the ``/v1/messages`` pass-through: bytes in, bytes out.

The SDK client (:mod:`gateway.upstreams.anthropic_llm`) parses answers into objects; a pass-through
must not: the client's body goes upstream as sent (only ``model`` is rewritten on a fallback) and
the upstream's bytes come back as sent. What this module adds is judgement:

- an HTTP error answer becomes :class:`UpstreamReply` (an :class:`UpstreamError` that keeps the
  status, body and ``request-id`` so the route can relay it verbatim); 400/404/413/422 — and a
  client's own key refused (401/403) — are the caller's fault and never count against a breaker;
- a stream is parsed event by event as it passes (:class:`SSEEvents`): only whole events are ever
  forwarded, the first content delta and ``message_stop`` are noticed, a broken ``data:`` line or an
  ``event: error`` is caught, so the route can fail over before any content went out and can end a
  stream that breaks later with a clean Anthropic ``event: error`` instead of a truncated success.

The HTTP client is ``llm.transport``: :mod:`gateway.upstreams.http1` (``h1``, default: a lean keep-alive
HTTP/1.1 client) or :mod:`gateway.upstreams.aiohttp_transport` (``aiohttp``); both raise
:class:`~gateway.upstreams.http1.TransportError` for a connection that fails or breaks.

Timeouts (seconds): ``connect_s`` per connection; ``idle_s`` for a stream's response headers and then
between two reads of its body (:class:`IdleWatch`: one watchdog entry per stream, not aiohttp's ``sock_read``,
which cancels and schedules a timer on every TCP read); the wait for the first content and the whole stream are
bounded by the caller (the guard's stage timeout and the route's stream limit).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Mapping

from orjson import loads as _loads

from gateway.upstreams.httperrors import parse_retry_after
from gateway.upstreams.transport import Body, Response, TransportError, TransportKind, make_transport
from resilience.errors import UpstreamError
from resilience.watchdog import Timeout, slack_for, watchdog

CALLER_FAULT = frozenset({400, 404, 413, 422})
RETRYABLE_4XX = frozenset({408, 409, 429})
# Anthropic's message for a prompt over the model's context window: "prompt is too long: 250000 tokens > 200000".
PROMPT_TOO_LONG = re.compile(r"prompt is too long|exceeds? the (?:model's )?context window", re.IGNORECASE)
# Newer models refuse a conversation that ends with an assistant turn (prefill).
PREFILL_REJECTED = re.compile(r"prefill|must end with a user message|final assistant content", re.IGNORECASE)
# Status reported for an `event: error` inside a 200 stream, by its `error.type`.
STREAM_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500,
                       "timeout_error": 504, "invalid_request_error": 400, "request_too_large": 413,
                       "authentication_error": 401, "permission_error": 403, "not_found_error": 404}
# Upstream headers relayed to the client with an error answer.
RELAYED_ERROR_HEADERS = ("request-id", "retry-after", "retry-after-ms", "x-should-retry")


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body).get("error") or {}
        return str(err.get("type") or "error"), str(err.get("message") or "")
    except (ValueError, AttributeError):
        return "error", body[:200].decode("utf-8", "replace")


class UpstreamReply(UpstreamError):
    """An HTTP error answer, kept whole (``status``, ``body`` bytes, ``headers`` to relay)."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str], *, client_key: bool = False) -> None:
        self.error_type, self.error_message = _error_fields(body)
        retryable = status >= 500 or status in RETRYABLE_4XX
        super().__init__(f"HTTP {status} {self.error_type}: {self.error_message}"[:300], status=status,
                         retryable=retryable, retry_after_s=parse_retry_after(headers) if retryable else None,
                         caller_fault=status in CALLER_FAULT or (client_key and status in (401, 403)))
        self.body = body
        self.content_type = headers.get("Content-Type", "application/json")
        self.headers = {k: headers[k] for k in RELAYED_ERROR_HEADERS if k in headers}

    @property
    def prompt_too_long(self) -> bool:
        return self.status == 400 and bool(PROMPT_TOO_LONG.search(self.error_message))

    @property
    def prefill_rejected(self) -> bool:
        return self.status == 400 and bool(PREFILL_REJECTED.search(self.error_message))


class StreamBroken(UpstreamError):
    """A stream broke: ``outcome`` is cut | stalled | malformed | no_stop | error."""

    def __init__(self, outcome: str, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(f"stream {outcome}: {message}", status=status, retryable=retryable)
        self.outcome = outcome


_DECODE = json.JSONDecoder().raw_decode
# A data line followed by the blank line that ends its event (group 1: the data; the blank line is only
# looked at, so a data line right after it still matches); a data line followed by another line of its
# event matches with an empty group 1. Lines are LF here (SSEEvents makes CR and CRLF LF). "." (no DOTALL) is
# any byte but LF, as [^\n], and re scans it faster: findall 2.7 -> 2.2 us on the bench's 13-event read.
_DATA_LINES = re.compile(rb"\ndata:(?:(.*)\n(?=\n))?")
_JSON_SPACE = " \t\r\n"  # what json.loads skips around a value


def _stdlib_json(data: bytes) -> Any:
    """The stdlib's verdict on what orjson refused: it also accepts NaN/Infinity and lone surrogate escapes
    (``"\\ud800"``), which json-based Anthropic clients read without complaint, so they are no malformed
    event. Raises ValueError (or RecursionError) when the stdlib refuses too."""
    text = data.decode().strip(_JSON_SPACE)  # SSE is UTF-8 by definition: no encoding sniffing
    payload, end = _DECODE(text)
    if end != len(text):
        raise ValueError("trailing data")
    return payload


class SSEEvents:
    """Incremental parser of an Anthropic SSE stream. :meth:`feed` returns the bytes of the complete,
    well-formed events received so far (a partial event is held back until it completes).

    Lines may end in LF (what Anthropic sends), CRLF or CR, as SSE allows: a stream with CR in it is
    relayed with its line ends made LF (JSON never holds a raw CR, so only line ends change)."""

    __slots__ = ("_rest", "_cr", "content_started", "stopped", "malformed", "error", "model")

    def __init__(self) -> None:
        self._rest = b""
        self._cr = False  # the last chunk ended in CR: an LF opening the next one is the same line end
        self.content_started = False  # a content_block_delta was seen
        self.stopped = False  # message_stop was seen
        self.malformed = False  # an event whose data is not a JSON object: nothing after it is forwarded
        self.error: dict[str, Any] | None = None  # the payload of an `event: error`
        self.model: str | None = None  # from message_start

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete event are held."""
        return bool(self._rest)

    def feed(self, chunk: bytes) -> bytes:
        if self._cr or b"\r" in chunk:
            chunk = self._lf(chunk)
        data = self._rest + chunk if self._rest else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return b""
        self._rest = data[end + 2:]
        whole = data[:end + 2] if end + 2 < len(data) else data
        if self._judge_all(whole):
            return whole
        return self._judge_each(data, end)

    def _judge_all(self, events: bytes) -> bool:
        """Judge the complete ``events`` with no Python step per event, when every event has the shape
        Anthropic sends (its one data line ends it) and every data is a JSON object; False, with nothing
        noted, for anything else (:meth:`_judge_each` then decides, event by event).

        Each data line is parsed on its own (never joined with others: segments of crafted events could
        balance into one valid JSON text). A data line the regex cannot take whole (another line follows it
        in its event) yields an empty text, which is no JSON: so every data line of ``events`` is judged."""
        try:
            datas = _DATA_LINES.findall(b"\n" + events if events.startswith(b"data:") else events)
            if len(datas) == 1:  # one event a read, as a stream arrives once it runs
                payload = _loads(datas[0])
                if type(payload) is not dict:
                    return False
                self._note(payload)
                return True
            payloads = list(map(_loads, datas))
            kinds = list(map(dict.get, payloads, repeat("type")))  # TypeError for data that is no object
        except (ValueError, TypeError):  # includes orjson's refusals the stdlib may still read
            return False
        if "content_block_delta" in kinds:
            self.content_started = True
        if "message_stop" in kinds:
            self.stopped = True
        if "message_start" in kinds or "error" in kinds:  # once a stream, if at all
            for payload, kind in zip(payloads, kinds):
                if kind == "message_start" or kind == "error":
                    self._note(payload)
        return True

    def _judge_each(self, data: bytes, end: int) -> bytes:
        """The general rule, event by event, for the complete events of ``data[:end + 2]``: what goes on
        (up to the first malformed event)."""
        pos = 0
        find = data.find
        # pos only moves forward: the blank line at `end` ends the last event, and a run of blank lines
        # ("\n\n\n", valid SSE) leaves a "\n" that opens the next block or an empty one (nothing to judge).
        while pos <= end:
            nxt = find(b"\n\n", pos, end + 2)  # this event's blank line
            start = find(b"data:", pos, nxt)
            if start >= 0:  # else a comment or an event without data: nothing to judge
                if (start != pos and data[start - 1] != 10) or find(b"\ndata:", start + 5, nxt) >= 0:
                    # Unusual shapes (several data lines, "data:" inside another line): the general rule.
                    datas = [line[5:] for line in data[pos:nxt].split(b"\n") if line.startswith(b"data:")]
                    payload = self._judge(b"\n".join(datas)) if datas else {}
                else:  # one data line, as Anthropic sends every event: no split per event
                    line_end = find(b"\n", start, nxt)
                    payload = self._judge(data[start + 5:nxt if line_end < 0 else line_end])
                if payload is None:
                    self.malformed = True
                    self._rest = b""
                    return data[:pos]
            pos = nxt + 2
        return data[:end + 2] if end + 2 < len(data) else data

    def _lf(self, chunk: bytes) -> bytes:
        """``chunk`` with CRLF and CR line ends made LF; a CRLF cut between two chunks stays one line end."""
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._cr = chunk[-1:] == b"\r"
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _judge(self, data: bytes) -> dict[str, Any] | None:
        """The event's JSON object (and what it tells), or None when it is not one (malformed)."""
        try:
            payload = _loads(data)
        except ValueError:  # orjson refuses a few texts the stdlib reads (see _stdlib_json)
            try:
                payload = _stdlib_json(data)
            except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                return None
        if type(payload) is not dict:
            return None
        self._note(payload)
        return payload

    def _note(self, payload: dict[str, Any]) -> None:
        """What one event's JSON object tells."""
        kind = payload.get("type")
        if kind == "content_block_delta":
            self.content_started = True
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self.model = message.get("model")
        elif kind == "error":
            self.error = payload.get("error") if isinstance(payload.get("error"), dict) else {"type": "api_error"}

    def broken(self, *, started: bool) -> StreamBroken | None:
        """The failure this parser has seen (malformed event or ``event: error``), if any."""
        if self.malformed:
            return StreamBroken("malformed", "an event's data is not JSON", status=502, retryable=not started)
        if self.error is not None:
            etype = str(self.error.get("type") or "api_error")
            status = STREAM_ERROR_STATUS.get(etype, 502)
            return StreamBroken("error", f"{etype}: {self.error.get('message', '')}"[:300], status=status,
                                retryable=not started and (status >= 500 or status == 429))
        return None


@dataclass
class JsonAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    model: str | None


class IdleWatch:
    """The idle limit of one stream body on the loop's :class:`~resilience.watchdog.Watchdog` (no timer of its
    own). A read only stamps :attr:`last` (cheap); the watchdog, when it fires before the gap is over, re-arms
    for the rest of it, and when the gap is over fails the body's reader with the error aiohttp's ``sock_read``
    raises (a ``TimeoutError``), at most :func:`~resilience.watchdog.slack_for` late.

    The gap is the *upstream's*: bytes that arrived since the last read (``total_bytes`` moved) or that
    wait unread in the reader (a slow client holds our loop in ``write``, and the transport pauses the socket)
    restart it, so a client slower than ``idle_s`` is never reported as a stalled model.

    ``armed=False`` starts the limit only at :meth:`arm` (timed from creation all the same): a reader whose
    reads never wait, e.g. a stream that arrived with its headers, needs no registration at all."""

    __slots__ = ("dog", "_idle_s", "_slack_s", "_content", "_armed", "_read", "last")

    def __init__(self, content: Body, idle_s: float, *, armed: bool = True) -> None:
        self.dog = watchdog()  # the loop's, for the stream's other limits too (watchdog() costs a getpid(2))
        self._idle_s = idle_s
        self._slack_s = slack_for(idle_s)
        self._content = content
        self._read = 0  # body bytes handed to us by readany() (made before the first read)
        self.last = self.dog.loop.time()
        self._armed = False
        if armed:
            self.arm()

    def arm(self) -> None:
        """Start the limit if it is not running; the gap counts from the last read (or creation)."""
        if not self._armed:
            self._armed = True
            self.dog.arm_at(self, self.last + self._idle_s, self._slack_s)

    @property
    def unread(self) -> bool:
        """Bytes arrived that were not read yet: the next read returns without waiting."""
        return self._content.total_bytes > self._read

    def touch(self, n: int) -> None:
        """``n`` bytes were read: the gap starts again."""
        self._read += n
        self.last = self.dog.loop.time()

    def expire(self) -> None:
        now = self.dog.loop.time()
        if self._content.total_bytes > self._read:  # arrived and not read yet: we are slow, not the model
            self.last = now
        due = self.last + self._idle_s
        if now < due:
            self.dog.arm_at(self, due, self._slack_s)
            return
        self._armed = False
        self._content.set_exception(TimeoutError(
            f"no data from the LLM stream for {self._idle_s:g} s (llm.idle_timeout_s)"))

    def cancel(self) -> None:
        if self._armed:
            self._armed = False
            self.dog.disarm(self)


@dataclass(slots=True)
class OpenStream:
    """A stream whose first content (or, with ``whole``, its end) has arrived; ``held`` is what to send
    first, ``events`` the parser to keep feeding, ``idle`` its idle limit (arm it before reading on; touch it
    on every read). End it with :meth:`finish`."""

    response: Response
    events: SSEEvents
    idle: IdleWatch | None = None
    held: list[bytes] = field(default_factory=list)

    def finish(self, *, reuse: bool) -> None:
        """Stop the idle timer; give the connection back (``reuse``: the body was read to its end) or close it."""
        if self.idle is not None:
            self.idle.cancel()
        if reuse:
            self.response.release(drain=True)  # message_stop may come before the body's last chunk
        else:
            self.response.close()


class AnthropicHTTP:
    """Raw Messages API calls over one shared transport (no connection cap: our bulkheads bound it)."""

    def __init__(self, *, connect_s: float, idle_s: float, transport: TransportKind = "h1") -> None:
        self.connect_s = connect_s
        self.idle_s = idle_s
        self.transport = make_transport(transport, connect_s=connect_s)

    async def _send(self, method: str, url: str, payload: bytes | None, headers: Mapping[str, str],
                    header_timeout_s: float | None, client_key: bool) -> Response:
        try:
            if header_timeout_s:
                async with Timeout(header_timeout_s):
                    resp: Response = await self.transport.request(method, url, payload, headers)
            else:
                resp = await self.transport.request(method, url, payload, headers)
        except TimeoutError:
            raise
        except TransportError as exc:
            raise UpstreamError(f"connection to the LLM failed: {exc}", status=None) from exc
        if resp.status >= 400:
            try:
                async with Timeout(header_timeout_s):  # an error body that stalls is bounded too
                    body = await resp.read()
            except (TransportError, TimeoutError):
                body = b""
            finally:
                resp.release()
            raise UpstreamReply(resp.status, body, resp.headers, client_key=client_key)
        return resp

    async def request_json(self, method: str, url: str, payload: bytes | None, headers: Mapping[str, str], *,
                           client_key: bool = False, expect: str | None = "message") -> JsonAnswer:
        """A whole JSON answer. ``expect``: the ``type`` the body must have (None: any JSON object).
        Raises :class:`UpstreamReply`, :class:`UpstreamError` (connection, broken body) or TimeoutError."""
        resp = await self._send(method, url, payload, headers, None, client_key)
        try:
            body = await resp.read()
        except TransportError as exc:
            raise UpstreamError(f"LLM answer broke off: {exc}", status=None) from exc
        finally:
            resp.release()
        try:
            parsed = _loads(body)
        except ValueError:  # what orjson refuses but the stdlib reads (NaN, lone surrogate escapes) is no broken answer
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                parsed = None
        if not isinstance(parsed, dict) or (expect is not None and parsed.get("type") != expect):
            raise UpstreamError("LLM answer is not a well-formed JSON message", status=502)
        model = parsed.get("model")
        return JsonAnswer(resp.status, resp.headers, body, model if isinstance(model, str) else None)

    async def open_stream(self, url: str, payload: bytes, headers: Mapping[str, str], *, whole: bool = False,
                          client_key: bool = False) -> OpenStream:
        """POST a streaming request and read until its first content delta (``whole``: its ``message_stop``).

        Raises :class:`UpstreamReply` for an HTTP error, :class:`StreamBroken` for a stream that breaks,
        is malformed, carries an ``event: error`` or ends without ``message_stop`` before that point,
        TimeoutError for a silence longer than ``idle_s``. The connection is closed on any failure."""
        resp = await self._send("POST", url, payload, headers, self.idle_s, client_key)
        opened = OpenStream(resp, SSEEvents())
        events = opened.events
        content = resp.content
        try:
            # Armed only before a read that may wait: a stream that came with its headers needs no timer.
            idle = opened.idle = IdleWatch(content, self.idle_s, armed=False) if self.idle_s else None
            while True:
                if idle is not None and not idle.unread:
                    idle.arm()
                try:
                    chunk = await content.readany()
                except TimeoutError:
                    raise
                except TransportError as exc:
                    raise StreamBroken("cut", f"{exc} before the first content") from exc
                if idle is not None:
                    idle.touch(len(chunk))
                if not chunk:
                    raise StreamBroken("no_stop", "the stream ended without message_stop")
                out = events.feed(chunk)
                if out:
                    opened.held.append(out)
                # A break in the same read as the first content still fails over: nothing was sent yet.
                broken = events.broken(started=False)
                if broken is not None:
                    raise broken
                if events.stopped or (events.content_started and not whole):
                    return opened
        except BaseException:
            opened.finish(reuse=False)
            raise

    async def close(self) -> None:
        await self.transport.close()
