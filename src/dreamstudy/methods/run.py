"""One cell of the study's grid, trained: what the `train` stage does for (subject, method, strategy)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from dreamstudy.io import atomic_dir
from dreamstudy.methods.registry import get_method
from dreamstudy.methods.trainer import Checkpointing, Examples, Hardware, Optimization, Prior, train
from dreamstudy.models.loading import load_components, load_tokenizer
from dreamstudy.seeding import derive_seed
from dreamstudy.trainset import read_prior_set, read_training_set


def fingerprint(config: dict, folders: list[Path]) -> str:
    """Hash of a run's settings and input files: a checkpoint resumes only the run that wrote it."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(folder).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def train_run(p, *, subject, method_name: str, strategy: str, training_set: str | Path,
              prior_set: str | Path, out_dir: str | Path, checkpoint_dir: str | Path,
              log: Callable[[int, float], None] | None = None) -> None:
    """Train `method_name` on `training_set` (subject: data.dreambench.Subject), with the class images that
    `prior_set` (trainset.write_prior_set) names, if any, and save it to `out_dir`."""
    training_set, checkpoint_dir = Path(training_set), Path(checkpoint_dir)
    method, schedule = get_method(method_name, p.train)
    hardware = Hardware(p.train.mixed_precision, p.train.gradient_checkpointing, p.train.use_8bit_adam)
    tokenizer = load_tokenizer(p.model.pretrained)  # checked before any model loads, then reused (~0.3 s a load)
    method.check(tokenizer, method.token(p.train.identifier))
    examples = Examples(read_training_set(training_set))
    inputs = [training_set]
    prior = read_prior_set(prior_set)
    if schedule.prior_preservation != (prior is not None):
        raise ValueError(f"{prior_set} does not match train.{method_name}.prior_preservation "
                         f"({schedule.prior_preservation}): rerun the prior_set stage (dvc repro)")
    if prior is not None:
        class_examples, weight = prior
        prior = Prior(Examples(class_examples), weight)
        inputs.append(class_examples[0].image.parent)
    run = f"{method_name}/{strategy}/{subject.name}"
    # everything the weights depend on, as the train stage's inputs file lists it (dreamstudy.dag)
    config = {"run": run, "seed": p.seed, "model": [p.model.pretrained, p.model.resolution],
              "identifier": p.train.identifier, "method": getattr(p.train, method_name).model_dump(),
              "hardware": [p.train.mixed_precision, p.train.gradient_checkpointing, p.train.use_8bit_adam],
              "prior_weight": prior.weight if prior else None}
    every = getattr(p.train.checkpoint_every, method_name)
    checkpointing = Checkpointing(checkpoint_dir, every, fingerprint(config, inputs))
    parts = load_components(p.model.pretrained, tokenizer=tokenizer)
    train(method, schedule, parts, examples, identifier=p.train.identifier, class_name=subject.class_name,
          resolution=p.model.resolution, seed=derive_seed(p.seed, "train", run), prior=prior,
          optimization=Optimization.of(getattr(p.train, method_name)), hardware=hardware,
          checkpointing=checkpointing, log=log)
    with atomic_dir(out_dir) as tmp:
        method.save(parts, tmp)
