"""The suite's memory ceiling (tests/conftest.py): an allocation past it is a MemoryError in the test
that asks, not a kernel OOM kill of the whole run and of everyone else's processes on the box."""
from __future__ import annotations

import resource

import numpy as np
import pytest

from tests.conftest import MAX_DATA_GB


@pytest.mark.skipif(MAX_DATA_GB <= 0, reason="RAG_TEST_MAX_DATA_GB=0 lifts the ceiling")
def test_an_allocation_past_the_ceiling_fails_in_the_test_that_asks():
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    assert soft != resource.RLIM_INFINITY and soft <= MAX_DATA_GB * (1 << 30)
    with pytest.raises(MemoryError):
        np.empty(soft + (1 << 30), dtype=np.uint8)  # never touched: without the ceiling it costs no memory
