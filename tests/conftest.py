"""Shared test setup."""

import os

# Tests never reach a model hub (set before transformers and huggingface_hub are imported, which read it once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from tests.utils.stack import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one intra-op thread: tiny models are fastest so on a shared 2-core CPU."""
    with one_thread():
        yield
