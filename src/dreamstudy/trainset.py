"""The training-set format that augment writes and the trainer reads: images with captions.jsonl (one row
per image: file, caption, source, augmented, mask, subject_mask); and the prior set, which class images
(if any) a run trains with for prior preservation.

Outside the augment package so that reading a training set does not import every strategy (their
diffusers pipelines and OpenCV add ~1 s to the train stage's start)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from dreamstudy.io import file_sha256, read_jsonl, write_json

CAPTIONS = "captions.jsonl"


class Example(NamedTuple):
    """One training image: its caption and, optionally, the mask of pixels its loss counts."""

    image: Path
    caption: str
    mask: Path | None = None


def read_training_set(folder: str | Path) -> list[Example]:
    """The examples of a training set written by `augment_subject` (or the class_priors stage)."""
    folder = Path(folder)
    captions = folder / CAPTIONS
    if not captions.is_file():
        raise FileNotFoundError(f"{captions}: missing; run the stage that writes it first")
    return [Example(folder / row["file"], row["caption"], folder / row["mask"] if row.get("mask") else None)
            for row in read_jsonl(captions)]


def write_prior_set(path: str | Path, class_images: str | Path | None, weight: float | None = None) -> None:
    """Record what a run's prior preservation trains with: the class-image folder, each of its files' sha256
    and the loss weight; or, with `class_images` None, that the run has none.

    The train stage depends on this small file instead of the class images and priors params, so that a
    method without prior preservation never reruns when they change, and one with it reruns exactly when
    its images or weight do."""
    record = {"class_images": None}
    if class_images is not None:
        folder = Path(class_images)
        read_training_set(folder)  # fails here, naming the folder, rather than in the train stage
        record = {"class_images": folder.as_posix(), "weight": weight,
                  "files": {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}}
    write_json(path, record)


def read_prior_set(path: str | Path) -> tuple[list[Example], float] | None:
    """The class examples and loss weight that `write_prior_set` recorded (None: no prior preservation),
    after checking that the folder still holds exactly the recorded files."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the prior_set stage first") from None
    if record["class_images"] is None:
        return None
    folder = Path(record["class_images"])
    found = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}
    if found != record["files"]:
        raise ValueError(f"{folder} no longer holds the class images recorded in {path}: "
                         "rerun the class_priors and prior_set stages (dvc repro)")
    return read_training_set(folder), record["weight"]
