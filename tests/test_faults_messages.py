"""An expected failure (params, data, models, a diverged run) stops a stage with one `error:` line naming the
thing and the fix, and exit status 1; a bug keeps its traceback."""

import os
import subprocess
import sys

import pytest

from dreamstudy.cli import run_stage
from dreamstudy.data.dreambench import DataError
from tests.test_data import REPO, write_params


def test_a_data_error_is_one_line_and_exit_status_1(tmp_path):
    write_params(tmp_path, source="local", local_path=str(tmp_path / "nowhere"))
    done = subprocess.run([sys.executable, REPO / "stages/fetch_data.py"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: data.local_path {str(tmp_path / 'nowhere')!r}: not a folder (source 'local' needs a copy of "
        "DreamBench's dataset/ folder there)"]


def test_only_expected_failures_lose_their_traceback():
    def data_fault():
        raise DataError("dog/00.jpg: not an image")

    with pytest.raises(SystemExit) as stopped:
        run_stage(data_fault)
    assert stopped.value.code == "error: dog/00.jpg: not an image"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_stage(bug)
