"""Memorization: how close each sample comes to one of its subject's training photos, and the "Real images"
upper bound (how alike a subject's own photos are)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from dreamstudy.data.dreambench import SUBJECTS, is_live
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.similarity import mean_self_cosine

REAL_IMAGE_COLUMNS = ("subject", "class", "live", "dino", "clip_i", "n_images")


def is_memorized(mem_dino: float, threshold: float) -> bool:
    """A sample whose DINO similarity to some training photo exceeds `threshold` counts as a copy."""
    return mem_dino > threshold


def real_images(subjects: Iterable[str], references: Mapping[str, list[Path]], cache: EmbeddingCache) -> pd.DataFrame:
    """Per subject, the mean DINO and CLIP-I similarity among its own real photos (pairs i != j): the
    DreamBooth paper's "Real images" row. NaN for a subject with a single photo."""
    rows = []
    for subject in sorted(set(subjects)):
        rows.append({"subject": subject, "class": SUBJECTS[subject], "live": is_live(subject),
                     **{score: mean_self_cosine(cache.images(which, references[subject]))
                        for score, which in (("dino", "dino"), ("clip_i", "clip"))},
                     "n_images": len(references[subject])})
    return pd.DataFrame.from_records(rows, columns=list(REAL_IMAGE_COLUMNS))
