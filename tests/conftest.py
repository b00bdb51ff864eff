"""Test-wide settings and the fixtures several test modules share."""

import shutil

import pytest
import torch

from dreamstudy.data import fetch

# The tests use tiny models, where a second thread costs more in synchronisation than it gains
# (measured 3-4x slower with two threads on the project's 2-core machines).
torch.set_num_threads(1)


@pytest.fixture
def local_copy(tmp_path, monkeypatch):
    """A copy of the embedded DreamBench, checked against its own SHA256SUMS as if that were pinned."""
    copy = tmp_path / "dataset"
    shutil.copytree(fetch.EMBEDDED_DIR, copy)
    monkeypatch.setattr(fetch, "DREAMBENCH_SHA256", copy / "SHA256SUMS")
    return copy
