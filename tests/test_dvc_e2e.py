"""The smoke study end to end through DVC, in a temporary copy of the repository.

One module-scoped run (minutes) serves every check: all stages run and produce every figure and table;
a second `dvc repro` reruns nothing; `dvc exp run -S aug.strength=0.5` reruns exactly `augment` and the
stages after it that its outputs change, and `dvc exp show` lists the changed metrics.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clean clone of the working tree (its files as they are, committed in a fresh git repo)."""
    dest = tmp_path_factory.mktemp("study")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "clone"], dest)
    return dest


@pytest.fixture(scope="module")
def smoke(clone) -> tuple[Path, str]:
    return clone, run(["make", "smoke-dag"], clone)


def test_every_stage_runs_and_every_output_exists(smoke):
    repo, log = smoke
    ran = stages_run(log)
    assert {"fetch_data", "evaluate", "report"} <= ran
    for stage in ("augment", "train", "sample"):
        assert {f"{stage}@dog-none", f"{stage}@backpack-classic"} <= {s.replace("-lora", "") for s in ran}
    summary = json.loads((repo / "results/metrics/summary.json").read_text())
    assert set(summary["lora"]) == {"none", "classic"}
    for name in ("dino", "clip_i", "clip_t"):
        assert -1 <= summary["lora"]["classic"][name] <= 1
    figures = {p.name for p in (repo / "paper/figures").iterdir()}
    assert any(n.endswith(".pdf") for n in figures) and any(n.endswith(".png") for n in figures)
    tables = list((repo / "paper/tables").glob("*.tex"))
    assert tables and all("random" in t.read_text().lower() for t in tables)
    assert (repo / "models/lora/classic/dog/pytorch_lora_weights.safetensors").is_file()
    assert (repo / "results/samples/lora/none/backpack/samples.jsonl").is_file()


def test_second_repro_reruns_nothing(smoke):
    repo, _ = smoke
    assert stages_run(run(["dvc", "repro"], repo)) == set()


def test_strength_experiment_reruns_augment_and_after(smoke):
    repo, _ = smoke
    before = json.loads((repo / "results/metrics/summary.json").read_text())
    ran = stages_run(run(["dvc", "exp", "run", "-S", "aug.strength=0.5"], repo))
    assert "fetch_data" not in ran
    assert {s for s in ran if s.startswith("augment@")} == {
        f"augment@{subject}-{strategy}" for subject in ("dog", "backpack") for strategy in ("none", "classic")}
    # `none` ignores the strength: its outputs are unchanged, so nothing downstream of it reruns
    assert {s for s in ran if s.startswith(("train@", "sample@"))} == {
        f"{stage}@{subject}-lora-classic" for stage in ("train", "sample") for subject in ("dog", "backpack")}
    assert {"evaluate", "report"} <= ran
    after = json.loads((repo / "results/metrics/summary.json").read_text())
    assert after["lora"]["classic"] != before["lora"]["classic"]
    assert after["lora"]["none"] == before["lora"]["none"]
    text = run(["dvc", "exp", "show", "--json"], repo)
    assert "aug.strength" in text or '"strength"' in text
    assert str(after["lora"]["classic"]["dino"])[:6] in text


def test_sigkilled_training_resumes_to_the_same_weights(smoke):
    repo, _ = smoke
    weights = repo / "models/lora/none/dog/pytorch_lora_weights.safetensors"
    uninterrupted = hashlib.sha256(weights.read_bytes()).hexdigest()
    stage = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train@dog-lora-none"], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **GIT_ENV})
    checkpoint = repo / "checkpoints/lora/none/dog/state.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    trainer = subprocess.run(["pgrep", "-f", "stages/train.py --subject dog --method lora --strategy none"],
                             capture_output=True, text=True).stdout.split()
    assert checkpoint.exists() and trainer, "the training stage finished before it could be killed"
    for pid in trainer:
        os.kill(int(pid), signal.SIGKILL)
    assert stage.wait() != 0 and not weights.exists()
    # --force: dvc.lock and the DVC cache still hold the smoke run's outputs, which a plain repro would
    # check out; a first run killed this way has neither, and `dvc repro` runs it, as --force does here
    log = run(["dvc", "repro", "--force", "--single-item", "train@dog-lora-none"], repo)
    assert "resuming from the checkpoint at step" in log
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == uninterrupted


def test_changing_one_strength_reruns_only_its_column(smoke):
    repo, log = smoke
    assert {"evaluate_ablation", "report_ablation", "train_ablation_none@dog"} <= stages_run(log)
    assert re.search(r"^none & -- & ", (repo / "paper/ablation/ablation.tex").read_text(), re.MULTILINE)
    ran = stages_run(run(["dvc", "exp", "run", "-S", "ablation.strengths=[0.5,0.75]"], repo))
    grid = {s for s in ran if s.startswith(("augment_ablation@", "train_ablation@", "sample_ablation@"))}
    assert grid == {f"{stage}_ablation@dog-{strategy}-0.75" for stage in ("augment", "train", "sample")
                    for strategy in ("classic", "scale")}
    assert {"evaluate_ablation", "report_ablation"} <= ran
    assert not ran & {"fetch_data", "class_priors", "evaluate", "report"}
    assert not {s for s in ran if "_ablation_none@" in s}  # the baseline has no strength
