"""JSON logs: one object per line, the current request id attached to every record.

Secrets never reach a record: config objects hold them as SecretStr, and ``redact`` scrubs any
value that looks like an API key before a record is written.
"""
from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import sys
import time
from typing import Any, Iterable

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


# Words one of which _HEADER_RE needs. Scanning a ~700-character access line with that case-insensitive
# alternation cost ~33 µs (half of a request's log line); these substring tests on the lowered ASCII text
# cost ~1 µs and skip it when no credential header name is present (non-ASCII text always takes the regex:
# IGNORECASE also matches a few non-ASCII letters, e.g. the dotless ı for i).
_HEADER_WORDS = ("authorization", "api-key", "x-admin-token", "cookie")


def _may_quote_header(text: str) -> bool:
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(word in lowered for word in _HEADER_WORDS)


def redact(value: Any) -> Any:
    if isinstance(value, str):
        value = _SECRET_RE.sub("[REDACTED]", value)
        # A function, not a backreference template: those compile lazily, which fails at interpreter exit.
        return _HEADER_RE.sub(_redact_header, value) if _may_quote_header(value) else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


resource_fields = service_fields  # the log lines' service/env/version (gateway.tracing owns the rule)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. ``timestamp`` is ISO 8601 UTC (an attribute Datadog's pipeline takes as
    the log date); ``dd.trace_id`` / ``dd.span_id`` (decimal, the low 64 bits of the OTel ids, as Datadog
    correlates them) and ``trace_id`` / ``span_id`` (hex) join a line to its trace when tracing is on."""

    def __init__(self, static: dict[str, str] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})
        # One encoder for every line (json.dumps with options builds a new one per call).
        self._encode = json.JSONEncoder(default=str, ensure_ascii=False).encode
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if self._second[0] != second:  # strftime once per second, not once per line
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": self._timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        out.update(log_fields(current_ids()))
        items: Iterable[tuple[str, Any]] = record.__dict__.items()
        if type(record) is logging.LogRecord:  # its own attributes come first: skip them unread
            items = itertools.islice(items, _N_RECORD_ATTRS, None)
        for key, value in items:
            if key not in _STD_ATTRS and key[:1] != "_":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # One pass of the patterns over the finished line, not one per field (a request line has ~25
        # fields: walking them cost ~0.3 ms per request, the largest single item of the pass-through).
        return redact(self._encode(out))


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
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rag_sidecar", False):
            root.removeHandler(h)
    handler._rag_sidecar = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_server_log_filter()
