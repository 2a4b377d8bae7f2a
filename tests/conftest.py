"""Shared test setup."""

import pytest

from tests.harness.launcher import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one intra-op thread: tiny models are fastest so on a shared 2-core CPU."""
    with one_thread():
        yield
