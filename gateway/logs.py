"""JSON logs: one object per line, the current request id attached to every record.

Secrets never reach a record: config objects hold them as SecretStr, and ``redact`` scrubs any
value that looks like an API key before a record is written.
"""
from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import re
import sys
import time
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import orjson

from gateway.tracing import current_ids, log_fields, service_fields

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# How many attributes LogRecord.__init__ sets (always the same ones, in order, before any extra).
_N_RECORD_ATTRS = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
# Anthropic keys (sk-ant-…), generic sk- keys, Bearer tokens.
_SECRET_RE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")


# A credential-bearing header line, whatever the key looks like (aiohttp quotes raw header bytes in errors).
_HEADER_RE = re.compile(r"((?:authorization|proxy-authorization|x-api-key|api-key|x-admin-token|cookie|set-cookie)"
                        r"\s*:\s*)[^\r\n'\"]*", re.IGNORECASE)


def _redact_header(match: re.Match[str]) -> str:
    return match.group(1) + "[REDACTED]"


def _may_quote_header(text: str) -> bool:
    """Whether ``text`` may hold a header name _HEADER_RE needs. Scanning a ~700-character access line with
    that case-insensitive alternation cost ~33 µs (half of a request's log line); these substring tests on
    the lowered ASCII text cost ~1 µs (spelled out: any() over a generator adds ~0.3 µs) and skip it
    when no credential header name is present (non-ASCII text always takes the regex: IGNORECASE also
    matches a few non-ASCII letters, e.g. the dotless ı for i)."""
    if not text.isascii():
        return True
    lowered = text.lower()
    return ("authorization" in lowered or "api-key" in lowered or "x-admin-token" in lowered
            or "cookie" in lowered)


def _may_hold_key(text: str) -> bool:
    # Each alternative of _SECRET_RE starts with one of these, case-sensitive: two substring tests (~0.5 µs
    # on an access line) instead of a regex scan (~3.5 µs) when the line holds neither.
    return "sk-" in text or "Bearer" in text


def redact(value: Any) -> Any:
    if isinstance(value, str):
        if _may_hold_key(value):
            value = _SECRET_RE.sub("[REDACTED]", value)
        # A function, not a backreference template: those compile lazily, which fails at interpreter exit.
        return _HEADER_RE.sub(_redact_header, value) if _may_quote_header(value) else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_fallback_encode = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


def _fast_encode(value: Any) -> str:
    """Compact JSON (no spaces), non-ASCII as UTF-8, anything else as ``str()`` (NaN and infinities as
    null). orjson: ~0.4 µs for an access line's fields against the json module's 3.5 µs. Raises
    orjson.JSONEncodeError for what orjson refuses: a lone surrogate, an int beyond 64 bits, a cycle."""
    return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()


def _encode(value: Any) -> str:
    """:func:`_fast_encode`, or for a value it refuses the json module's bytes with the same separators (a
    cycle raises ValueError there)."""
    try:
        return _fast_encode(value)
    except orjson.JSONEncodeError:
        return _fallback_encode(value)


resource_fields = service_fields  # the log lines' service/env/version (gateway.tracing owns the rule)


_NOW = object()  # format_fields/_line: read the request id (and span ids) of the current context


class JsonFormatter(logging.Formatter):
    """One JSON object per line. ``timestamp`` is ISO 8601 UTC (an attribute Datadog's pipeline takes as
    the log date); ``dd.trace_id`` / ``dd.span_id`` (decimal, the low 64 bits of the OTel ids, as Datadog
    correlates them) and ``trace_id`` / ``span_id`` (hex) join a line to its trace when tracing is on."""

    def __init__(self, static: dict[str, str] | None = None) -> None:
        super().__init__()
        # Read-only: the fast path's cached heads and reserved keys are computed from it once, here.
        self.static: Mapping[str, str] = MappingProxyType(dict(static or {}))
        self._second: tuple[int, str] = (-1, "")
        # format_fields' fast path (see there), unless a static field would move a key it splices.
        self._splice = not {"timestamp", "level", "logger", "msg", "request_id"} & set(self.static)
        self._heads: dict[tuple[str, int, str], str] = {}  # (logger, level, msg) -> '"level": …, <static>', redacted
        self._plain_keys: set[str] = set()  # keys seen that the fast path can splice as they are
        # Keys format_fields' fast path cannot splice (_line puts them in an earlier place), with _STD_ATTRS.
        self._reserved = frozenset({"timestamp", "level", "logger", "msg", "request_id", *self.static})

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if self._second[0] != second:  # strftime once per second, not once per line
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        items: Iterable[tuple[str, Any]] = record.__dict__.items()
        if type(record) is logging.LogRecord:  # its own attributes come first: skip them unread
            items = itertools.islice(items, _N_RECORD_ATTRS, None)
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self._line(record.created, record.msecs, record.levelname.lower(), record.name,
                          record.getMessage(), items, exc)

    def format_fields(self, name: str, levelno: int, msg: str, fields: dict[str, Any],
                      created: float | None = None, rid: Any = _NOW) -> str:
        """The line :meth:`format` writes for ``logging.getLogger(name).log(levelno, msg, extra=fields)``,
        built without a LogRecord (the access log's fast path: :func:`log_event`); ``created``: the
        record's time (epoch seconds), now by default; ``rid``: the request id the record had (taken later,
        outside its context: no span ids either), by default the current one."""
        if created is None:
            created = time.time()
        ids = current_ids() if rid is _NOW else None
        if rid is _NOW:
            rid = request_id_var.get()
        if self._splice and fields and type(msg) is str and ids is None and (rid is None or type(rid) is str):
            line = self._spliced(created, name, levelno, msg, rid, fields)
            if line is not None:
                return line
        return self._line(created, (created - int(created)) * 1000, _level_name(levelno), name, msg,
                          fields.items(), None, rid, ids)

    def _spliced(self, created: float, name: str, levelno: int, msg: str, rid: str | None,
                 fields: dict[str, Any]) -> str | None:
        """:meth:`_line`'s bytes, spliced from pieces: the constant head (level, logger, msg, static fields)
        encoded once, the request id, and ``fields`` encoded by orjson as they are, without copying
        them into a new dict first. ~5 µs less per access line. None when ``fields`` has a key _line would
        place or drop differently (reserved, a LogRecord attribute, ``_…``, not a str) or a value the
        encoder refuses: the caller takes the ordinary path.
        Redacted in two pieces, the head once (when cached) and the rest per line: what redact() matches
        lies inside one JSON string (a quote ends every pattern), so cutting between two values changes
        nothing, and the timestamp (digits) never matches."""
        if not self._plain_keys.issuperset(fields):
            if not all(type(k) is str and k[:1] != "_" and k not in _STD_ATTRS and k not in self._reserved
                       for k in fields):
                return None
            if len(self._plain_keys) > 4096:  # bounded: callers with ever-new keys
                self._plain_keys.clear()
            self._plain_keys.update(fields)
        head = self._heads.get((name, levelno, msg))
        if head is None:
            head = redact(_encode({"level": _level_name(levelno), "logger": name, "msg": msg,
                                        **self.static})[1:-1])
            if len(self._heads) >= 256:
                self._heads.clear()
            self._heads[(name, levelno, msg)] = head
        try:
            body = _fast_encode(fields)
            if rid:
                body = f'"request_id":{_fast_encode(rid)},{body[1:]}'
            else:
                body = body[1:]
        except Exception:  # noqa: BLE001 - orjson refused a value (a lone surrogate, an int beyond 64 bits, a
            # circular value): _line writes, or raises, what the ordinary path does
            return None
        timestamp = self._timestamp(created, (created - int(created)) * 1000)
        return f'{{"timestamp":"{timestamp}",{head},{redact(body)}'

    def _line(self, created: float, msecs: float, level: str, name: str, msg: str,
              extras: Iterable[tuple[str, Any]], exc: str | None, rid: Any = _NOW, ids: Any = _NOW) -> str:
        out: dict[str, Any] = {
            "timestamp": self._timestamp(created, msecs),
            "level": level,
            "logger": name,
            "msg": msg,
            **self.static,
        }
        if rid is _NOW:
            rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        out.update(log_fields(current_ids() if ids is _NOW else ids))
        for key, value in extras:
            if key not in _STD_ATTRS and key[:1] != "_":
                out[key] = value
        if exc is not None:
            out["exc"] = exc
        # One pass of the patterns over the finished line, not one per field (a request line has ~25
        # fields: walking them cost ~0.3 ms per request, the largest single item of the pass-through).
        return redact(_encode(out))


_LEVEL_NAMES: dict[int, str] = {}


def _level_name(levelno: int) -> str:
    name = _LEVEL_NAMES.get(levelno)
    if name is None:
        name = _LEVEL_NAMES[levelno] = logging.getLevelName(levelno).lower()
    return name


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The gateway's JSON handler (:func:`setup_logging`). Besides records it takes the access log's lines
    built without a LogRecord (:func:`log_event`); those are written together at the end of the event-loop
    tick that made them (``call_soon``), or, when the last such write was less than ``window_s`` ago, at
    ``window_s`` after it (``call_at``): under load one write per ``window_s`` instead of one per tick, and
    no line waits longer than that. A ``kill -9`` loses at most those lines (Envoy's access log buffers 1 s
    by default); a normal exit writes them (``logging.shutdown`` flushes every handler). A record emitted
    meanwhile first writes the waiting lines, so the stream keeps the order of the calls.

    Outside a span, a line is also *built* when it is written, from what :meth:`write_fields` kept (the
    fields, the time, the request id): the lines of one write are encoded in a row, with the encoder's code
    and data still in the CPU's caches, which costs about half of building each one inside its own request
    (measured in situ: ~10 µs per access line built per request, ~3.7 µs in a row). So ``fields`` and what
    it holds must not change after the call."""

    window_s = 0.001

    def __init__(self, stream: Any, formatter: "JsonFormatter") -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self.json = formatter
        self._pending: list[str | tuple[str, int, str, dict[str, Any], float, Any]] = []  # lines, or to build
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where the end-of-tick write is due
        self._written_at = float("-inf")  # loop.time() of the last end-of-tick write

    def write_fields(self, name: str, levelno: int, msg: str, fields: dict[str, Any]) -> None:
        """Write the line of ``logging.getLogger(name).log(levelno, msg, extra=fields)``."""
        line: str | tuple[str, int, str, dict[str, Any], float, Any]
        if current_ids() is None:  # built when written (see the class), with this context's request id
            line = (name, levelno, msg, fields, time.time(), request_id_var.get())
        else:  # a span's ids are read in its context: built now
            try:
                line = self.json.format_fields(name, levelno, msg, fields)
            except Exception:  # noqa: BLE001 - as Handler.emit: a logging bug must not fail the request
                self.handleError(logging.makeLogRecord({"name": name, "levelno": levelno, "msg": msg}))
                return
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending.append(line)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop in this thread: nothing to coalesce with
                self._write_pending()
                return
            # Per loop: a loop closed before its end-of-tick write ran must not stop the next one's.
            if self._flush_loop is not loop:
                due = self._written_at + self.window_s
                if loop.time() < due:
                    loop.call_at(due, self._end_of_tick, loop)
                else:  # idle: at the end of this tick
                    loop.call_soon(self._end_of_tick, loop)
                self._flush_loop = loop

    def _end_of_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._flush_loop is loop:
                self._flush_loop = None
            self._write_pending()
            self._written_at = loop.time()

    def _write_pending(self) -> None:
        """Write the waiting lines in one call (the caller holds the lock)."""
        if not self._pending:
            return
        lines: list[str] = []
        for line in self._pending:
            if isinstance(line, tuple):
                name, levelno, msg, fields, created, rid = line
                try:
                    line = self.json.format_fields(name, levelno, msg, fields, created=created, rid=rid)
                except Exception:  # noqa: BLE001 - as Handler.emit: a logging bug loses its line, not the others
                    self.handleError(logging.makeLogRecord({"name": name, "levelno": levelno, "msg": msg}))
                    continue
            lines.append(line)
        self._pending.clear()
        if not lines:
            return
        text = self.terminator.join(lines) + self.terminator
        try:
            self.stream.write(text)
            super().flush()
        except Exception:  # noqa: BLE001 - as StreamHandler.emit
            self.handleError(logging.makeLogRecord({"msg": "access log lines"}))

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:  # Handler.handle holds the lock
            self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            super().flush()


def _sole_json_handler(logger: logging.Logger, level: int) -> JsonLinesHandler | None:
    """The handler a ``level`` record of ``logger`` would reach when it is the only one, a
    :class:`JsonLinesHandler` with no filter; else None (another handler, a filter, pytest's capture)."""
    if logger.filters or logger.disabled:
        return None
    found = None
    node: logging.Logger | None = logger
    while node is not None:
        for h in node.handlers:
            if found is not None or type(h) is not JsonLinesHandler or h.filters or level < h.level:
                return None
            found = h
        if not node.propagate:
            break
        node = node.parent
    return found


def log_event(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra=fields)``: the same line, written straight by the gateway's JSON
    handler when that is the only handler the record would reach (which may build it up to
    ``JsonLinesHandler.window_s`` later: ``fields`` and what it holds must not change after the call).
    The access log's hot path: logging's LogRecord, findCaller and handler chain cost ~20 µs of a ~400 µs
    pass-through request."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level)
    if handler is None:
        logger.log(level, msg, extra=fields)
    else:
        handler.write_fields(logger.name, level, msg, fields)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}
        rid = request_id_var.get()
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if rid:
            base += f" request_id={rid}"
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return redact(base)


# Pinned at WARNING even when the level is DEBUG: chatty, and at DEBUG the HTTP clients (anthropic
# logs "Request options" with the whole prompt) dump request bodies that logging.log_prompts must control.
QUIET_LOGGERS = ("aiohttp.access", "httpx", "httpx2", "httpcore", "grpc", "anthropic", "openai")


# aiohttp's own loggers: "Error handling request" carries the raw request bytes (headers, keys included).
SERVER_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")
_RAW_BYTES = re.compile(r"b(['\"]).*?(?<!\\)\1", re.DOTALL)


class ServerLogFilter(logging.Filter):
    """Routes aiohttp's server logs through redaction. A malformed request (the client's mistake) becomes
    one WARNING line naming the error, without a stack trace or the raw bytes; anything else keeps its
    traceback, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused", ()
            record.exc_info = record.exc_text = None
            detail = _RAW_BYTES.sub("[raw bytes withheld]", str(exc.message)).strip()
            record.__dict__.update(event="bad_http_request", status=exc.code, error=type(exc).__name__,
                                   detail=redact(" ".join(detail.split()))[:300])
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def install_server_log_filter() -> None:
    """Idempotent: add :class:`ServerLogFilter` to aiohttp's server loggers."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ServerLogFilter) for f in logger.filters):
            logger.addFilter(ServerLogFilter())


def setup_logging(level: str = "INFO", fmt: str = "json", stream: Any = None,
                  service: dict[str, str] | None = None) -> None:
    """Configure the root logger once (idempotent): JSON or text lines to ``stream`` (stderr);
    ``service``: fields on every JSON line (:func:`resource_fields`)."""
    handler: logging.Handler
    if fmt == "json":
        handler = JsonLinesHandler(stream or sys.stderr, JsonFormatter(service))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rag_sidecar", False):
            root.removeHandler(h)
            h.flush()  # lines still held for the write window go out, not away with the handler
    handler._rag_sidecar = True  # type: ignore[attr-defined,union-attr]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_server_log_filter()
