"""Fixtures for the resilience tests. ``redis_server`` / ``redis_url`` are meant to move to
tests/conftest.py once other suites need a real Redis."""
from __future__ import annotations

import pytest

from tests.redis_server import RedisServer
from tests.resilience.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_server():
    """A fresh, empty redis-server on a free loopback port; ``.stop()`` / ``.start()`` to simulate
    an outage."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
