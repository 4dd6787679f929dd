"""Issue 11 item 5: aiohttp's own server log never carries raw request bytes or keys.

Before: a malformed request was logged by ``aiohttp.server`` at ERROR with a stack trace quoting the raw
header bytes, API key included (``b'x-api-key: my-secret-key-123\\x01'``).
"""
from __future__ import annotations

import asyncio
import io
import json
import logging

from gateway.logs import JsonFormatter

SECRET = b"my-secret-key-123"


async def test_malformed_requests_are_logged_without_raw_bytes_or_keys(gateway):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aiohttp.server")
    logger.addHandler(handler)
    try:
        for head in (b"POST /v1/query HTTP/1.1\r\nHost: x\r\nx-api-key: " + SECRET + b"\x01\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + SECRET + b"\r\nX-Big: " + b"a" * 9000
                     + b"\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(head)
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.")
            writer.close()
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    text = buf.getvalue()
    assert SECRET.decode() not in text and "Traceback" not in text and "aaaaaaaa" not in text
    for line in lines:
        assert line["level"] == "warning" and line["event"] == "bad_http_request" and line["status"] == 400


def test_credential_header_lines_are_redacted_in_any_log_value():
    from gateway.logs import redact

    assert redact("b'X-Api-Key: plain-looking-key'") == "b'X-Api-Key: [REDACTED]'"
    assert "hunter2" not in redact("authorization: Basic hunter2\r\nhost: x")


async def test_malformed_http_gets_the_json_error_shape_without_echoing_bytes(gateway):
    # Before: aiohttp's own text/plain "400, message: Invalid header value char ... b'x-api-key: ...'".
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nx-api-key: " + SECRET + b"\x01\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "bad_http_request" and error["field"] is None
    assert SECRET not in raw
