"""Checkpoints: a run stopped at any step and started again ends with the same weights, bit for bit, and so
does one checkpointed at another interval."""

import hashlib

import pytest

from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import Checkpointing, Concept, Hardware, train
from dreamstudy.models.loading import load_components
from tests.helpers import noise_examples, smoke_train_params

STEPS = 7


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 3, seed=1, size=32)


def run(examples, out, checkpoints, kill_at=None, fingerprint="run", seed=3, every=2, method_name="lora",
        hardware=Hardware()):
    method, schedule = get_method(method_name, smoke_train_params(
        **{method_name: {"steps": STEPS, "batch_size": 2, "prior_preservation": False}}))
    parts = load_components("tiny")
    losses = []

    def log(step, loss):
        losses.append((step, loss))
        if step == kill_at:
            raise Killed

    try:
        train(method, schedule, parts, [Concept(examples, "sks", "dog")], resolution=32, seed=seed,
              checkpointing=Checkpointing(checkpoints, every=every, fingerprint=fingerprint), hardware=hardware,
              log=log)
    except Killed:
        return None, losses
    out.mkdir()
    method.save(parts, out)
    digest = hashlib.sha256()
    for path in sorted(out.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest(), losses


@pytest.fixture(scope="module")
def uninterrupted(examples, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    digest, losses = run(examples, root / "out", root / "ckpt")
    assert not (root / "ckpt").exists()  # a finished run leaves no checkpoint behind
    return digest, losses


@pytest.mark.parametrize("kill_at, resumed_from", [(0, None), (2, 2), (3, 2), (5, 4)])
def test_resumed_run_is_bit_identical(examples, uninterrupted, tmp_path, capfd, kill_at, resumed_from):
    digest, losses = run(examples, tmp_path / "out", tmp_path / "ckpt", kill_at=kill_at)
    assert digest is None
    capfd.readouterr()
    resumed_digest, resumed_losses = run(examples, tmp_path / "out", tmp_path / "ckpt")
    message = f"resuming from the checkpoint at step {resumed_from}"
    assert (message in capfd.readouterr().err) == (resumed_from is not None)
    assert resumed_digest == uninterrupted[0]
    assert resumed_losses == uninterrupted[1]  # the log replays the steps done before the stop


def test_checkpoint_of_another_run_is_not_resumed(examples, uninterrupted, tmp_path):
    run(examples, tmp_path / "out", tmp_path / "ckpt", kill_at=4, fingerprint="other settings", seed=4)
    digest, _ = run(examples, tmp_path / "out", tmp_path / "ckpt")
    assert digest == uninterrupted[0]


def test_the_checkpoint_interval_leaves_the_weights_unchanged(examples, uninterrupted, tmp_path):
    """Why train.checkpoint_every is no dependency of the train stage (dreamstudy.dag)."""
    for every in (1, STEPS + 1):
        assert run(examples, tmp_path / f"out{every}", tmp_path / f"ckpt{every}", every=every) == uninterrupted


def test_resumed_run_is_bit_identical_in_bf16_with_8bit_adam(examples, tmp_path):
    """The memory switches keep resuming exact: bf16 autocast over bf16 frozen weights, and bitsandbytes'
    8-bit AdamW moments (DreamBooth, whose weights are large enough for them) through the safetensors file."""
    pytest.importorskip("bitsandbytes", reason="requirements-gpu.txt, which `make test` installs")
    hardware = Hardware(mixed_precision="bf16", use_8bit_adam=True)
    whole = run(examples, tmp_path / "whole", tmp_path / "whole_ckpt", method_name="dreambooth", hardware=hardware)
    run(examples, tmp_path / "out", tmp_path / "ckpt", kill_at=5, method_name="dreambooth", hardware=hardware)
    assert run(examples, tmp_path / "out", tmp_path / "ckpt", method_name="dreambooth", hardware=hardware) == whole
