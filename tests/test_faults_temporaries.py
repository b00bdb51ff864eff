"""A stage killed mid-write leaves no temporary inside a DVC output's folder (which another stage may depend
on): temporaries live in the project's `.tmp/`, and a dead writer's are removed by the next writer."""

import os
import shutil
import subprocess
import sys

import pytest

from dreamstudy.io import SCRATCH, atomic_dir, atomic_file
from tests.helpers import ROOT


@pytest.fixture
def project(tmp_path):
    """A DVC project's root (as `dvc init` marks it), the working directory of its stages."""
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_failed_writer_leaves_nothing_in_the_outputs_folder(project):
    out = project / "results" / "samples" / "lora" / "none" / "dog"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "00.png").write_bytes(b"half")
            assert tmp.parent == project / SCRATCH
            assert list(out.parent.iterdir()) == []  # a SIGKILL here would leave nothing there either
            raise RuntimeError("killed")
    assert list(out.parent.iterdir()) == []
    assert list((project / SCRATCH).iterdir()) == []


def test_a_failed_file_writer_leaves_nothing_in_the_outputs_folder(project):
    out = project / "results" / "metrics" / "summary.json"
    with pytest.raises(KeyError):
        with atomic_file(out) as handle:
            handle.write("{")
            assert list(out.parent.iterdir()) == []
            raise KeyError("killed")
    assert list(out.parent.iterdir()) == []
    assert list((project / SCRATCH).iterdir()) == []


def test_a_replaced_output_leaves_no_temporary(project):
    out = project / "models" / "lora" / "none" / "dog"
    for name in ("a.txt", "b.txt"):
        with atomic_dir(out) as tmp:
            (tmp / name).write_text(name)
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["dog"]
    assert list((project / SCRATCH).iterdir()) == []


KILLED_WRITER = """
import os, signal, sys
from dreamstudy.io import atomic_dir, atomic_file
with atomic_dir(sys.argv[1]) as tmp, atomic_file(sys.argv[2]) as handle:
    (tmp / "00.png").write_bytes(b"half")
    handle.write("{")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_stages_temporaries_are_removed_by_the_next_writer(project):
    samples = project / "results" / "samples" / "lora" / "none" / "dog"
    metrics = project / "results" / "metrics" / "summary.json"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(samples), str(metrics)],
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert killed.returncode < 0  # killed by its signal
    assert list(samples.parent.iterdir()) == [] and list(metrics.parent.iterdir()) == []
    assert len(list((project / SCRATCH).iterdir())) == 2

    with atomic_file(project / "results" / "other.json") as handle:  # any writer of the project, next
        handle.write("{}")
    assert list((project / SCRATCH).iterdir()) == []


def test_only_temporaries_whose_writer_is_gone_are_removed(project):
    scratch = project / SCRATCH
    scratch.mkdir()
    dead = scratch / f".dog.{dead_pid()}.abcd_123.tmp"
    (dead / "nested").mkdir(parents=True)
    (dead / "nested" / "00.png").write_bytes(b"half")
    dead_file = scratch / f".summary.json.{dead_pid()}.x1y2z3w4.tmp"
    dead_file.write_text("{")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        try:
            alive = scratch / f".dog.{writer.pid}.abcd_123.tmp"  # another stage, still writing
            alive.mkdir()
            mine = scratch / f".cat.{os.getpid()}.abcd_123.tmp"  # a killed writer's pid, reused by this process
            mine.mkdir()
            not_ours = scratch / "notes.txt"
            not_ours.write_text("not a temporary")

            with atomic_dir(project / "results" / "samples" / "dog") as tmp:
                (tmp / "00.png").write_bytes(b"whole")
            assert sorted(scratch.iterdir()) == sorted([alive, not_ours])
            assert not mine.exists()
        finally:
            writer.kill()


def test_outside_a_dvc_project_the_temporary_is_a_hidden_sibling(tmp_path):
    """No stage depends on such a folder; the rename then needs no other place on the same filesystem."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_git_and_dvc_ignore_the_temporaries():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert subprocess.run(["git", "check-ignore", "-q", f"{SCRATCH}/.dog.1.abcd_123.tmp"], cwd=ROOT).returncode == 0
    assert f"/{SCRATCH}/" in (ROOT / ".dvcignore").read_text().splitlines()
