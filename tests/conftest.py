"""Shared test setup."""

import os

# Tests never reach a model hub (set before transformers and huggingface_hub are imported, which read it once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from inferenceguard.training.train_critic import one_thread
from tests.utils.tiny import save_classifier, save_lm


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one intra-op thread: tiny models are fastest so on a shared 2-core CPU."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
    """Folders of a tiny chat LM (context 512), a 1-output reward model and a safe/unsafe cost classifier (the
    judge too): real checkpoints on disk, as a user would name them on the command line."""
    return {
        "lm": save_lm(tmp_path_factory.mktemp("lm")),
        "rm": save_classifier(tmp_path_factory.mktemp("rm"), ["score"]),
        "cm": save_classifier(tmp_path_factory.mktemp("cm"), ["safe", "unsafe"]),
    }
