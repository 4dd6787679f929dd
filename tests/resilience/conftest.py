"""Fixtures for the resilience tests (``redis_server`` / ``redis_url`` live in tests/conftest.py)."""
from __future__ import annotations

import pytest

from tests.resilience.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
