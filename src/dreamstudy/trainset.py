"""The training-set format that augment writes and the trainer reads: images with captions.jsonl (one row
per image: file, caption, source, augmented, mask, subject_mask).

Outside the augment package so that reading a training set does not import every strategy (their
diffusers pipelines and OpenCV add ~1 s to the train stage's start)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from dreamstudy.io import read_jsonl

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
