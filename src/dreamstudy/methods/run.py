"""One cell of a study's grid, trained: what the `train` stage does for (subject, method, strategy), and the
multi-concept study's joint training of a pair."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from dreamstudy.io import atomic_dir
from dreamstudy.methods.registry import get_method
from dreamstudy.methods.trainer import Checkpointing, Concept, Examples, Hardware, Optimization, Prior, train
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


def read_concept(p, subject, method_name: str, training_set: Path, prior_set: Path) -> tuple[Concept, list[Path]]:
    """`subject` (data.dataset.Subject) as the trainer learns it: its training set, identifier and the class
    images that `prior_set` (trainset.write_prior_set) names, if any; and the folders its weights depend on."""
    prior = read_prior_set(prior_set)
    if getattr(p.train, method_name).prior_preservation != (prior is not None):
        raise ValueError(f"{prior_set} does not match train.{method_name}.prior_preservation: rerun the "
                         "prior_set stage (dvc repro)")
    inputs = [Path(training_set)]
    if prior is not None:
        class_examples, weight = prior
        prior = Prior(Examples(class_examples), weight)
        inputs.append(class_examples[0].image.parent)
    concept = Concept(Examples(read_training_set(training_set)), p.train.identifiers[subject.name],
                      subject.class_name, prior)
    return concept, inputs


def train_run(p, *, run: str, method_name: str, subjects: Sequence, training_sets: Sequence[str | Path],
              prior_sets: Sequence[str | Path], out_dir: str | Path, checkpoint_dir: str | Path,
              log: Callable[[int, float], None] | None = None) -> None:
    """Train `method_name` on `subjects` (data.dataset.Subject; several are trained jointly), each with its
    training set and prior set, and save it to `out_dir`. `run` (the layout's run key) seeds the run."""
    method, schedule = get_method(method_name, p.train)
    hardware = Hardware(p.train.mixed_precision, p.train.gradient_checkpointing, p.train.use_8bit_adam)
    tokenizer = load_tokenizer(p.model.pretrained)  # checked before any model loads, then reused (~0.3 s a load)
    for subject in subjects:
        method.check(tokenizer, method.token(p.train.identifiers[subject.name]))
    concepts, inputs = [], []
    for subject, training_set, prior_set in zip(subjects, training_sets, prior_sets, strict=True):
        concept, folders = read_concept(p, subject, method_name, Path(training_set), Path(prior_set))
        concepts.append(concept)
        inputs += folders
    # everything the weights depend on, as the train stage's inputs file lists it (dreamstudy.dag)
    config = {"run": run, "seed": p.seed, "model": [p.model.pretrained, p.model.resolution],
              "identifiers": [c.identifier for c in concepts], "method": getattr(p.train, method_name).model_dump(),
              "hardware": [p.train.mixed_precision, p.train.gradient_checkpointing, p.train.use_8bit_adam],
              "prior_weights": [c.prior.weight if c.prior else None for c in concepts]}
    every = getattr(p.train.checkpoint_every, method_name)
    checkpointing = Checkpointing(Path(checkpoint_dir), every, fingerprint(config, inputs))
    parts = load_components(p.model.pretrained, tokenizer=tokenizer)
    train(method, schedule, parts, concepts, resolution=p.model.resolution, seed=derive_seed(p.seed, "train", run),
          optimization=Optimization.of(getattr(p.train, method_name)), hardware=hardware,
          checkpointing=checkpointing, log=log, name=run)
    with atomic_dir(out_dir) as tmp:
        method.save(parts, tmp)
