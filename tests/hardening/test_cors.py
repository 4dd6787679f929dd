"""Issue 11 item 5: CORS with aiohttp-cors; only configured origins may call from a browser.

Before: no CORS at all and text/plain accepted as JSON, so any web page could make a visitor's browser
POST a query (no preflight needed) and spend the sidecar's Anthropic key on a no-auth deployment.
"""
from __future__ import annotations

from tests.conftest import make_settings

APP = "https://chat.example.com"
EVIL = "https://evil.example"


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key"}


async def test_by_default_no_origin_may_call(gateway):
    resp = await gateway.options("/v1/query", headers=preflight(EVIL))
    assert "Access-Control-Allow-Origin" not in resp.headers and resp.status >= 400
    # The simple (preflight-free) request a page can send is refused before any work.
    resp = await gateway.post("/v1/query", data=b'{"query": "tea"}', headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert resp.status == 415 and "Access-Control-Allow-Origin" not in resp.headers


async def test_a_configured_origin_gets_cors_and_others_do_not(gateway_factory, data_dir):
    keys = ["sk-browser-key-000000000001"]
    client = await gateway_factory(make_settings(data_dir, **{"server.cors_origins": [APP], "auth.api_keys": keys}))
    resp = await client.options("/v1/query", headers=preflight(APP))
    assert resp.status == 200  # a preflight carries no key: answered before auth
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "x-api-key" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in resp.headers
    resp = await client.post("/v1/query", json={"query": "green tea"}, headers={"Origin": APP, "x-api-key": keys[0]})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == APP
    assert "X-RAG-Mode" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.options("/v1/query", headers=preflight(EVIL))
    assert "Access-Control-Allow-Origin" not in resp.headers and resp.status >= 400
    resp = await client.post("/v1/query", json={"query": "green tea"}, headers={"Origin": EVIL, "x-api-key": keys[0]})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_a_wildcard_origin_is_refused_at_start():
    import pytest

    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="cors_origins"):
        load_settings(None, env={}, overrides={"server.cors_origins": ["*"]})
