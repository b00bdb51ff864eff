"""The DAG in layers for existing schedulers (dreamstudy.scaleout, scripts/repro_parallel.sh, scripts/
repro_worker.sh), on a toy DVC project of the study's shape (a layer of sources, one of per-item stages, one
gathering stage): parallel slots in one workspace, and workers in separate clones sharing a DVC remote, end with
the serial run's dvc.lock; a killed worker resumes with nothing lost. bench/scaleout.py does the same on the
smoke DAG."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dreamstudy.scaleout import ScaleOutError, layers, parse_dot, parse_shard, shard

REPO = Path(__file__).resolve().parents[1]
PARALLEL, WORKER = REPO / "scripts/repro_parallel.sh", REPO / "scripts/repro_worker.sh"
needs_parallel = pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel not installed")

DOT = """strict digraph {
"fetch";
"train@a";
"train@b";
"report";
"lone";
"fetch" -> "train@a";
"fetch" -> "train@b";
"train@a" -> "report";
"train@b" -> "report";
"fetch" -> "report";
}
"""


def test_layers_put_each_stage_one_after_its_deepest_upstream():
    stages, edges = parse_dot(DOT)
    assert layers(stages, edges) == [["fetch", "lone"], ["train@a", "train@b"], ["report"]]
    assert shard(["a", "b", "c"], 0, 2) == ["a", "c"] and shard(["a", "b", "c"], 1, 2) == ["b"]
    assert parse_shard("1/4") == (1, 4)


@pytest.mark.parametrize("bad, message", [
    (lambda: layers(["a", "b"], [("a", "b"), ("b", "a")]), r"cycle among \['a', 'b'\]"),
    (lambda: layers([], []), "no stages"),
    (lambda: layers(["a"], [("a", "z")]), "'z' the graph does not list|names a stage"),
    (lambda: parse_dot('digraph {\n"a" => "b";\n}'), "unexpected line"),
    (lambda: parse_shard("2/2"), r"--shard '2/2': expected I/N with 0 <= I < N"),
    (lambda: parse_shard("0"), "expected I/N"),
])
def test_bad_graphs_and_shards_are_named(bad, message):
    with pytest.raises(ScaleOutError, match=message):
        bad()


DVC_YAML = """stages:
  source:
    foreach: [a, b, c]
    do:
      cmd: cat seed.txt > source_${item}.txt && echo ${item} >> source_${item}.txt && echo source@${item} >> "$RAN"
      deps: [seed.txt]  # a stage without dependencies always runs: DVC caches no run of it
      outs: ["source_${item}.txt"]
  work:
    foreach: [a, b, c]
    do:
      cmd: >-
        echo work@${item} >> "$STARTED" && sleep $WORK_SECONDS &&
        cat source_${item}.txt source_${item}.txt > work_${item}.txt && wc -c < work_${item}.txt > size_${item}.txt &&
        echo work@${item} >> "$RAN"
      deps: ["source_${item}.txt"]
      outs: ["work_${item}.txt"]
      metrics:  # tracked by Git, as the study's headline metrics (a metric, not a plain `cache: false` out, of
        - "size_${item}.txt":  # which DVC saves no run: stage/__init__.py, reproduce's no_cache_outs)
            cache: false
  gather:
    cmd: cat work_a.txt work_b.txt work_c.txt > gather.txt && echo gather >> "$RAN"
    deps: [work_a.txt, work_b.txt, work_c.txt]
    outs: [gather.txt]
"""
STAGES = {"source@a", "source@b", "source@c", "work@a", "work@b", "work@c", "gather"}


def run(args, cwd, env, check=True, **kwargs):
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True, **kwargs)


@pytest.fixture
def toy(tmp_path):
    """A committed toy DVC project whose default remote is a local folder; its stages log their runs to $RAN."""
    origin = tmp_path / "origin"
    origin.mkdir()
    env = {**os.environ, "RAN": str(tmp_path / "ran.log"), "STARTED": str(tmp_path / "started.log"),
           "WORK_SECONDS": "0", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (origin / "dvc.yaml").write_text(DVC_YAML)
    (origin / "seed.txt").write_text("seed\n")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "toy study"]):
        run(command, origin, env)
    return origin, env


def clone(toy, name) -> Path:
    origin, env = toy
    folder = origin.parent / name
    run(["git", "clone", "-q", str(origin), str(folder)], origin.parent, env)
    return folder


def ran(env, log="RAN") -> list[str]:
    """The stage commands that finished (or with log="STARTED", that started)."""
    path = Path(env[log])
    return path.read_text().split() if path.is_file() else []


def lock(folder) -> dict:
    return yaml.safe_load((folder / "dvc.lock").read_text())


def serial_lock(toy) -> dict:
    folder = clone(toy, "serial")
    run(["dvc", "repro"], folder, toy[1])
    for log in ("RAN", "STARTED"):
        Path(toy[1][log]).unlink()
    return lock(folder)


@needs_parallel
def test_parallel_slots_in_one_workspace_end_with_the_serial_lock(toy):
    expected = serial_lock(toy)
    folder = clone(toy, "parallel")
    result = run([str(PARALLEL), "3"], folder, toy[1])
    assert "layer 00: 3 stage(s), 3 slot(s)" in result.stdout and "layer 02: 1 stage(s)" in result.stdout
    assert lock(folder) == expected and sorted(ran(toy[1])) == sorted(STAGES)  # each stage ran once
    joblogs = list((folder / "logs/parallel").glob("*/01.joblog"))
    assert len(joblogs) == 1 and len(joblogs[0].read_text().splitlines()) == 4  # header + 3 jobs
    again = run([str(PARALLEL), "3"], folder, toy[1])  # resumed: nothing left
    assert sorted(ran(toy[1])) == sorted(STAGES) and again.returncode == 0


@needs_parallel
def test_parallel_refuses_zero_slots_and_names_failed_stages(toy):
    folder = clone(toy, "parallel")
    result = run([str(PARALLEL), "0"], folder, toy[1], check=False)
    assert result.returncode == 2 and "SLOTS must be a number of jobs >= 1 (got '0')" in result.stderr
    env = {**toy[1], "WORK_SECONDS": "oops"}  # sleep fails: layer 01's three stages fail
    failed = run([str(PARALLEL), "2"], folder, env, check=False)
    assert failed.returncode == 1 and "error: layer 01: failed stage(s)" in failed.stderr
    assert all(f"  work@{item}" in failed.stderr for item in "abc") and not (folder / "gather.txt").exists()
    run([str(PARALLEL), "2"], folder, toy[1])  # fixed: layer 01 resumes, the rest follows
    assert sorted(ran(toy[1])) == sorted(STAGES)


def worker(folder, layer_file, env) -> subprocess.Popen:
    return subprocess.Popen([str(WORKER), str(layer_file)], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_group(job: subprocess.Popen) -> None:
    """SIGKILL a worker and its children (dvc, the stage command), and wait until they are gone: DVC drops a
    dead process's lock only once its PID no longer exists."""
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    for _ in range(100):
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed worker's processes outlived SIGKILL")


@pytest.mark.parametrize("share", ["remote", "shared cache"])
def test_workers_in_clones_share_results_and_a_third_clone_runs_nothing(toy, share):
    """Two workers (SkyPilot's way: a DVC remote; Slurm's: one cache on a shared file system) take half of each
    layer; one is killed inside a stage and rerun; a third clone then restores every stage."""
    expected = serial_lock(toy)
    workers = [clone(toy, f"worker{i}") for i in range(2)]
    for i, folder in enumerate(workers):
        run([sys.executable, "-m", "dreamstudy.scaleout", "layers", "layers", "--shard", f"{i}/2"], folder, toy[1])
    slow = {**toy[1], "WORK_SECONDS": "3"}
    if share == "shared cache":
        slow["DVC_SHARED_CACHE"] = str(toy[0].parent / "shared-cache")
        os.mkdir(slow["DVC_SHARED_CACHE"])
    for layer in ("00", "01", "02"):
        jobs = [worker(folder, folder / "layers" / f"{layer}.txt", slow) for folder in workers]
        if layer == "01":  # worker 0 (work@a, work@c) is killed inside its first stage's command, then rerun
            while "work@a" not in ran(toy[1], "STARTED") and jobs[0].poll() is None:
                time.sleep(0.1)
            kill_group(jobs[0])
            jobs[0] = worker(workers[0], workers[0] / "layers/01.txt", slow)
        for job in jobs:  # the barrier
            output = job.communicate()[0]
            assert job.returncode == 0, output
    assert sorted(ran(toy[1])) == sorted(STAGES)  # each finished once: the killed work@a only when redone
    assert ran(toy[1], "STARTED").count("work@a") == 2
    before = ran(toy[1])
    final = clone(toy, "final")
    if share == "shared cache":
        run(["dvc", "cache", "dir", "--local", slow["DVC_SHARED_CACHE"]], final, toy[1])
    run(["dvc", "repro"] + (["--pull"] if share == "remote" else []), final, toy[1])
    assert ran(toy[1]) == before, "the final clone ran a stage command"
    assert lock(final) == expected
    assert (final / "gather.txt").read_text().split() == [word for item in "abc" for word in ("seed", item) * 2]


def test_worker_refuses_a_clone_without_remote_before_any_stage(toy):
    origin, env = toy
    run(["dvc", "remote", "default", "--unset"], origin, env)
    (origin / "stages.txt").write_text("source@a\n")
    result = run([str(WORKER), "stages.txt"], origin, env, check=False)
    assert result.returncode == 2 and "no default DVC remote" in result.stderr and not ran(env)
    result = run([str(WORKER), "missing.txt"], origin, env, check=False)
    assert result.returncode == 2 and "usage:" in result.stderr
