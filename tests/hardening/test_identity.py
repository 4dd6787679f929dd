"""Issue 11 item 5: who a client is. Never a header the client picks; keys compared in constant time."""
from __future__ import annotations

import pytest

from gateway.middleware import match_key
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(60)
LIMITED = {"rate_limit.enabled": True, "rate_limit.rate_per_s": 0.01, "rate_limit.burst": 2}


async def _statuses(client, n: int, headers_of) -> list[int]:
    out = []
    for i in range(n):
        resp = await client.post("/v1/query", json={"query": "green tea"}, headers=headers_of(i))
        out.append(resp.status)
    return out


async def test_rotating_x_client_id_does_not_buy_a_fresh_bucket(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **LIMITED))
    statuses = await _statuses(client, 4, lambda i: {"X-Client-Id": f"rotating-{i}"})
    assert statuses == [200, 200, 429, 429]


async def test_a_victims_x_client_id_cannot_starve_the_victim(gateway_factory, data_dir):
    # The attacker and the victim are different API keys: whatever X-Client-Id the attacker sends, the
    # victim's bucket is its own.
    keys = ["sk-attacker-000000000001", "sk-victim-00000000000002"]
    client = await gateway_factory(make_settings(data_dir, **{**LIMITED, "auth.api_keys": keys}))
    await _statuses(client, 3, lambda i: {"x-api-key": keys[0], "X-Client-Id": "key:…0002"})
    assert await _statuses(client, 2, lambda i: {"x-api-key": keys[1]}) == [200, 200]


async def test_a_forwarded_address_counts_only_from_a_trusted_proxy(gateway_factory, data_dir):
    # Untrusted peer (no trusted_proxies): X-Forwarded-For is ignored, one bucket for the peer.
    client = await gateway_factory(make_settings(data_dir, **LIMITED))
    statuses = await _statuses(client, 3, lambda i: {"X-Forwarded-For": f"203.0.113.{i + 1}"})
    assert statuses == [200, 200, 429]


async def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{**LIMITED, "rate_limit.trusted_proxies": ["127.0.0.0/8"]}))
    # A client prepending a forged address does not escape its bucket: the proxy appends the real one.
    forged = await _statuses(client, 3, lambda i: {"X-Forwarded-For": f"10.9.9.{i}, 203.0.113.7"})
    assert forged == [200, 200, 429]
    assert await _statuses(client, 1, lambda i: {"X-Forwarded-For": "203.0.113.8"}) == [200]


def test_keys_are_compared_in_constant_time_against_every_key():
    keys = {"sk-aaaaaaaaaaaaaaaa": "…aaaa", "sk-bbbbbbbbbbbbbbbb": "…bbbb"}
    assert match_key("sk-bbbbbbbbbbbbbbbb", keys) == "…bbbb"
    assert match_key("sk-bbbbbbbbbbbbbbbc", keys) is None
    assert match_key("sk-\udcff-not-utf8", keys) is None  # undecodable header bytes: no 500


