"""Checkpoints under faults: one that cannot be read is set aside, saying so, and training starts afresh to the
same weights; a checkpoint resumes exactly its own run, whatever other methods' settings do."""

import shutil

import pytest

from dreamstudy.data.dataset import Subject
from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.methods import checkpoint
from dreamstudy.methods.run import train_run
from dreamstudy.methods.trainer import Checkpointing
from dreamstudy.params import load_params
from dreamstudy.trainset import CAPTIONS, write_prior_set
from tests.helpers import ROOT, noise_examples, smoke_train_params
from tests.test_resume import Killed, run  # LoRA on the tiny model, stopped where asked

STEPS = 5
EVERY = 2  # tests.test_resume.run's interval
RESUMED = f"resuming from the checkpoint at step {EVERY}"


def killer(kill_at: int | None, losses: list | None = None):
    """A training log that stops the run at step `kill_at`, as a kill would, after the checkpoint before it."""
    def log(step, loss):
        if losses is not None:
            losses.append((step, loss))
        if step == kill_at:
            raise Killed
    return log


# ---- a checkpoint that cannot be read


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 3, seed=1, size=32)


@pytest.fixture(scope="module")
def uninterrupted(examples, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    return run(examples, root / "out", root / "ckpt")


@pytest.mark.parametrize("damaged", [checkpoint.TENSORS, checkpoint.STATE])
def test_a_truncated_checkpoint_is_set_aside_and_training_starts_afresh(examples, uninterrupted, tmp_path, capfd,
                                                                        damaged):
    ckpt = tmp_path / "ckpt"
    assert run(examples, tmp_path / "out", ckpt, kill_at=EVERY + 1)[0] is None
    file = ckpt / damaged
    truncated = file.read_bytes()[:file.stat().st_size // 2]
    file.write_bytes(truncated)  # a copy cut short, a full disk
    capfd.readouterr()

    assert run(examples, tmp_path / "out", ckpt) == uninterrupted  # the same weights, the same log
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(said) == 1
    assert str(file) in said[0] and str(tmp_path / "ckpt.corrupt-1") in said[0] and "step 0" in said[0]
    assert RESUMED not in err
    assert (tmp_path / "ckpt.corrupt-1" / damaged).read_bytes() == truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.corrupt-1", "out"]  # the finished run: no ckpt


@pytest.mark.parametrize("state", ["", '{"fingerprint": "run", "ste', "[1, 2]", '{"fingerprint": "run"}', "\xff"])
def test_an_unreadable_state_is_set_aside_next_to_earlier_ones(tmp_path, capfd, state):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / checkpoint.STATE).write_bytes(state.encode("latin-1"))
    (tmp_path / "ckpt.corrupt-1").mkdir()  # set aside before
    assert checkpoint.resume(Checkpointing(ckpt, EVERY, "run"), [], None, None) == (0, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.corrupt-1", "ckpt.corrupt-2"]
    assert (tmp_path / "ckpt.corrupt-2" / checkpoint.STATE).read_bytes() == state.encode("latin-1")
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and str(ckpt / checkpoint.STATE) in err


# ---- the fingerprint: what a checkpoint's run depends on


@pytest.fixture(scope="module")
def training_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("set")
    images = noise_examples(folder, 2, seed=2, size=32)
    write_jsonl(folder / CAPTIONS, [{"file": e.image.name, "caption": e.caption} for e in images.items])
    write_prior_set(folder.parent / "prior_set.json", None, 1.0)
    return folder


def train_lora(training_set, checkpoints, **changes):
    """The train stage's run of LoRA on dog (stopped at step EVERY), with params.smoke.yaml's `train` sections
    changed by `changes`."""
    sections = {"lora": {"steps": STEPS, "batch_size": 1, "prior_preservation": False},
                "checkpoint_every": {"lora": EVERY}}
    for name, change in changes.items():
        sections[name] = sections.get(name, {}) | change
    p = load_params(ROOT / "params.smoke.yaml")
    p = p.model_copy(update={"train": smoke_train_params(**sections)})
    with pytest.raises(Killed):
        train_run(p, run="lora/none/dog", method_name="lora", subjects=[Subject("dog", SUBJECTS["dog"], True, [], [])],
                  training_sets=[training_set], prior_sets=[training_set.parent / "prior_set.json"],
                  out_dir=checkpoints.parent / "out", checkpoint_dir=checkpoints, log=killer(EVERY))


@pytest.fixture(scope="module")
def killed_checkpoint(training_set, tmp_path_factory):
    """A LoRA run's checkpoint at step EVERY, left by the run stopped just after it."""
    checkpoints = tmp_path_factory.mktemp("killed") / "ckpt"
    train_lora(training_set, checkpoints)
    assert (checkpoints / checkpoint.STATE).is_file()
    return checkpoints


@pytest.mark.parametrize("changes, resumed", [
    ({"dreambooth": {"lr": 5e-4}}, True),        # another method's setting
    ({"checkpoint_every": {"lora": 3}}, True),   # when checkpoints are written, not what the weights are
    ({"lora": {"lr": 5e-4}}, False),             # the run's own setting: another run
])
def test_a_checkpoint_resumes_exactly_the_run_that_wrote_it(training_set, killed_checkpoint, tmp_path, capfd,
                                                           changes, resumed):
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(killed_checkpoint, checkpoints)
    capfd.readouterr()
    train_lora(training_set, checkpoints, **changes)
    err = capfd.readouterr().err
    assert (RESUMED in err) == resumed
    discarded = [line for line in err.splitlines() if "discarded" in line]
    assert len(discarded) == (not resumed)
    assert all(str(checkpoints) in line and "step 0" in line for line in discarded)
