"""Outputs are whole or absent: a failure inside atomic_dir/atomic_file leaves the old state."""

import pytest

from dreamstudy.io import atomic_dir, atomic_file


def test_atomic_dir_failure_leaves_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_replaces_on_success(tmp_path):
    out = tmp_path / "out"
    for name in ("a.txt", "b.txt"):
        with atomic_dir(out) as tmp:
            (tmp / name).write_text(name)
    assert [p.name for p in out.iterdir()] == ["b.txt"]


def test_atomic_file_failure_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_file(tmp_path / "x.json") as handle:
            handle.write("{")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
