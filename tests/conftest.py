"""Test-wide settings and the fixtures several test modules share."""

import shutil
import urllib.request

import pytest
import torch

from dreamstudy.data import fetch
from tests.helpers import FakeGitHub, github_zip

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


@pytest.fixture
def github(monkeypatch):
    """GitHub replaced by a server of a stand-in archive of the embedded copy (FakeGitHub: it records the URLs)."""
    monkeypatch.setattr(fetch, "DREAMBENCH_SHA256", fetch.EMBEDDED_SHA256)  # the stand-in has the small images
    server = FakeGitHub(github_zip())
    monkeypatch.setattr(urllib.request, "urlopen", server.urlopen)
    return server
