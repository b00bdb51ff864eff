"""The train stage's library entry: a token the method cannot train stops it before any model loads; each
method's optimizer settings (weight decay, gradient clipping) reach the training loop, which applies them."""

import contextlib
import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dreamstudy.data.dataset import Subject
from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.methods import get_method, run
from dreamstudy.methods.trainer import Concept, Optimization, train
from dreamstudy.models.loading import load_components
from dreamstudy.params import load_params
from dreamstudy.trainset import CAPTIONS, write_prior_set
from tests.helpers import ROOT, noise_examples, smoke_train_params

LR = 1e-2


def test_untrainable_token_stops_before_models_load(tmp_path, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("models loaded before the token was checked")

    monkeypatch.setattr(run, "load_components", no_models)
    p = load_params(ROOT / "params.smoke.yaml")
    identifiers = p.train.identifiers | {"dog": "|endoftext|"}  # past the schema's check, as a stale params object
    p = p.model_copy(update={"train": p.train.model_copy(update={"identifiers": identifiers})})
    subject = Subject("dog", SUBJECTS["dog"], True, [], [])
    with pytest.raises(ValueError, match="train.identifiers"):
        run.train_run(p, run="textual_inversion/none/dog", method_name="textual_inversion", subjects=[subject],
                      training_sets=[tmp_path / "missing"], prior_sets=[tmp_path / "prior_set.json"],
                      out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")


def test_each_methods_optimizer_settings_reach_the_trainer(tmp_path, monkeypatch):
    class Reached(Exception):
        """The training loop was called: with these settings."""

    def training_loop(*args, optimization, **kwargs):
        raise Reached(optimization)

    monkeypatch.setattr(run, "load_components", lambda *args, **kwargs: None)
    monkeypatch.setattr(run, "train", training_loop)
    p = load_params(ROOT / "params.smoke.yaml")
    lora = p.train.lora.model_copy(update={"weight_decay": 0.05, "max_grad_norm": None})
    p = p.model_copy(update={"train": p.train.model_copy(update={"lora": lora})})
    write_jsonl(tmp_path / "set" / CAPTIONS, [{"file": "00.png", "caption": "a photo of sks dog"}])
    write_prior_set(tmp_path / "prior_set.json", None, 1.0)
    with pytest.raises(Reached) as reached:
        run.train_run(p, run="lora/none/dog", method_name="lora",
                      subjects=[Subject("dog", SUBJECTS["dog"], True, [], [])],
                      training_sets=[tmp_path / "set"], prior_sets=[tmp_path / "prior_set.json"],
                      out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    assert reached.value.args == (Optimization(weight_decay=0.05, max_grad_norm=None),)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 2, seed=5, size=32)


def train_lora(examples, steps: int, optimization: Optimization) -> dict[str, torch.Tensor]:
    """LoRA's weights after `steps` steps at learning rate LR (0 steps: as initialised)."""
    method, schedule = get_method("lora", smoke_train_params(lora={"lr": LR, "batch_size": 1}))
    parts = load_components("tiny")
    train(method, dataclasses.replace(schedule, steps=steps), parts, [Concept(examples, "sks", "dog")],
          resolution=32, seed=0, optimization=optimization)
    return {name: p.detach().clone() for name, p in parts.unet.named_parameters() if "lora" in name}


def test_weight_decay_is_adamws(examples):
    # Decoupled decay: from the same initial weights (so the same gradient), one step with decay wd ends each
    # weight lr x wd x its initial value below where the step without decay ends it.
    initial = train_lora(examples, 0, Optimization())
    plain, decayed = (train_lora(examples, 1, Optimization(weight_decay=wd)) for wd in (0.0, 0.5))
    assert any(w.abs().max() > 0.1 for w in initial.values())
    for name, w in initial.items():
        torch.testing.assert_close(decayed[name] - plain[name], -LR * 0.5 * w, rtol=0, atol=1e-6, msg=name)


@contextlib.contextmanager
def gradient_norms():
    """The gradients' total norm as each optimizer step finds it (after any clipping)."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield norms
    finally:
        handle.remove()


def test_max_grad_norm_clips_the_gradients(examples):
    with gradient_norms() as unclipped:
        train_lora(examples, 2, Optimization(max_grad_norm=None))
    limit = min(unclipped) / 2
    with gradient_norms() as clipped:
        train_lora(examples, 2, Optimization(max_grad_norm=limit))
    assert clipped == pytest.approx([limit, limit], rel=1e-4)
