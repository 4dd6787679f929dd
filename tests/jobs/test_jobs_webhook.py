"""Completion webhooks to a real loopback receiver that fails the first attempts: retried with backoff,
each attempt signed (HMAC-SHA256 over timestamp + raw body) and verified the way a receiver would."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from gateway.jobs.webhook import SignatureError, sign, verify_signature
from tests.conftest import make_settings
from tests.jobs.test_jobs_api import wait_finished

SECRET = "whsec_test_0123456789"


class Receiver:
    """Answers 503 to the first ``fail_first`` deliveries, then 200; keeps every request."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.seen: list[tuple[float, dict[str, str], bytes]] = []
        self.delivered = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((time.monotonic(), dict(request.headers), await request.read()))
        if len(self.seen) <= self.fail_first:
            return web.Response(status=503)
        self.delivered.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def receiver():
    r = Receiver(fail_first=2)
    await r.start()
    yield r
    await r.stop()


async def test_webhook_is_retried_until_delivered_and_every_attempt_is_signed(gateway_factory, data_dir, receiver):
    client = await gateway_factory(make_settings(data_dir, **{
        "jobs.webhook_secret": SECRET, "jobs.webhook_backoff_base_s": 0.2, "jobs.webhook_allowed_hosts": ["127.0.0.1"]}))
    job = await (await client.post("/v1/jobs", json={"query": "green tea", "webhook_url": receiver.url})).json()
    await wait_finished(client, job["id"])
    await asyncio.wait_for(receiver.delivered.wait(), timeout=30)
    assert len(receiver.seen) == 3
    for n, (_, headers, body) in enumerate(receiver.seen, 1):
        verify_signature(SECRET, headers["X-RAG-Signature"], body)  # raises if wrong
        assert headers["X-RAG-Webhook-Id"] == job["id"] and headers["X-RAG-Delivery-Attempt"] == str(n)
        event = json.loads(body)
        assert event["type"] == "job.completed" and event["job"]["progress"]["done"] == 1
        with pytest.raises(SignatureError):
            verify_signature("wrong-secret", headers["X-RAG-Signature"], body)
        with pytest.raises(SignatureError):
            verify_signature(SECRET, headers["X-RAG-Signature"], body.replace(b"completed", b"cancelled"))
    state = (await (await client.get(f"/v1/jobs/{job['id']}")).json())["webhook"]
    assert state == {"url": receiver.url, "status": "delivered", "attempts": 3}


async def test_webhook_host_outside_the_allow_list_is_refused(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{
        "jobs.webhook_secret": SECRET, "jobs.webhook_allowed_hosts": ["hooks.example.com"]}))
    resp = await client.post("/v1/jobs", json={"query": "tea", "webhook_url": "http://169.254.169.254/x"})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "webhook_url"


def test_signature_rejects_a_replayed_old_timestamp_and_a_missing_header():
    body = b'{"a":1}'
    old = sign(SECRET, body, timestamp=int(time.time()) - 600)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(SECRET, old, body)
    assert verify_signature(SECRET, old, body, tolerance_s=900) > 0
    with pytest.raises(SignatureError):
        verify_signature(SECRET, None, body)


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    from gateway.jobs.webhook import backoff_s

    assert [backoff_s(n, 2.0, 600, rand=1.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(20, 2.0, 600, rand=1.0) == 600  # capped
    assert backoff_s(3, 2.0, 600, rand=0.25) == 2.0
