"""Issue 11 item 4: every input the hardening run found gets a JSON 4xx naming what is wrong.

Each case failed before (500 RecursionError, 500 on a corrupt gzip body or a non-UTF-8 admin token,
503 ``keyword_index:error`` for a filter integer beyond 64 bits, form/plain/no Content-Type taken as JSON).
"""
from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from tests.conftest import make_settings

JSON = {"Content-Type": "application/json"}
DEEP = b'{"query": "tea", "filters": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}"


def _deep_messages(depth: int) -> bytes:
    return (b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], '
            b'"metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}")


async def assert_json_error(resp, status: int, field: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) >= {"type", "message", "field"}, body
    assert body["error"]["field"] == field, body
    return body["error"]


@pytest.mark.parametrize("path", ["/v1/query", "/v1/retrieve"])
async def test_json_nested_a_thousand_deep_is_a_400(gateway, path):
    err = await assert_json_error(await gateway.post(path, data=DEEP, headers=JSON), 400)
    assert err["type"] == "invalid_json" and "nest" in err["message"]


async def test_json_nested_a_thousand_deep_on_the_messages_proxy_is_a_400(gateway):
    await assert_json_error(await gateway.post("/v1/messages", data=_deep_messages(1000), headers=JSON), 400)
    await assert_json_error(await gateway.post("/v1/messages", data=_deep_messages(30_000), headers=JSON), 400)


async def test_a_corrupt_gzip_body_is_a_400(gateway):
    resp = await gateway.post("/v1/query", data=b"\x1f\x8b\x08\x00garbage-not-deflate" * 3,
                              headers={**JSON, "Content-Encoding": "gzip"})
    err = await assert_json_error(resp, 400, "Content-Encoding")
    assert err["type"] == "invalid_body"
    # A well-formed gzip body is read.
    resp = await gateway.post("/v1/query", data=gzip.compress(b'{"query": "green tea"}'),
                              headers={**JSON, "Content-Encoding": "gzip"})
    assert resp.status == 200


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
async def test_a_filter_integer_beyond_64_bits_is_a_422(gateway, value):
    resp = await gateway.post("/v1/query", data=json.dumps({"query": "tea", "filters": {"n": value}}).encode(),
                              headers=JSON)
    await assert_json_error(resp, 422, "filters.n")
    resp = await gateway.post("/v1/query", data=json.dumps({"query": "tea", "filters": {"n": [1, value]}}).encode(),
                              headers=JSON)
    await assert_json_error(resp, 422, "filters.n")


async def raw_request(client, head: bytes) -> tuple[int, dict]:
    """Send raw bytes (header values no HTTP client would encode) and parse the JSON answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def test_a_non_utf8_admin_token_is_a_401(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": "admin-token-0123456789"}))
    status, body = await raw_request(client, b"GET /admin/breakers HTTP/1.1\r\nHost: x\r\n"
                                             b"Authorization: Bearer \xff\xfe\xfd\r\nConnection: close\r\n\r\n")
    assert status == 401 and body["error"]["type"] == "unauthorized"


async def test_a_non_utf8_api_key_is_a_401(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.api_keys": ["sk-real-key-0000000000"]}))
    status, body = await raw_request(client, b"POST /v1/query HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\r\n"
                                             b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                                             b"Connection: close\r\n\r\n{}")
    assert status == 401 and body["error"]["type"] == "unauthorized"


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
@pytest.mark.parametrize("path", ["/v1/query", "/v1/messages"])
async def test_json_bodies_require_application_json(gateway, path, ctype):
    # text/plain, form and missing types are what a browser sends cross-origin without a CORS preflight:
    # taking them as JSON let any web page spend the sidecar's keys.
    headers = {} if ctype is None else {"Content-Type": ctype}
    resp = await gateway.post(path, data=b'{"query": "tea"}', headers=headers,
                              skip_auto_headers=["Content-Type"] if ctype is None else None)
    err = await assert_json_error(resp, 415, "Content-Type")
    assert "application/json" in err["message"]


async def test_application_json_with_charset_is_accepted(gateway):
    resp = await gateway.post("/v1/query", data=b'{"query": "green tea"}',
                              headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200


@pytest.mark.parametrize("path", ["/v1/query", "/v1/messages"])
async def test_a_body_that_stops_arriving_is_a_408_within_the_deadline(gateway, path):
    """Only a body received in full is read without the deadline's timer: one that stalls mid-way is cut."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\nX-Request-Timeout: 0.3\r\n\r\n{\"query\": ".encode())  # no more
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408") and body["error"]["type"] == "request_timeout", body
