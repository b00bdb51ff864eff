"""PRES, prior preservation: how much a fine-tuned model's plain class images ("a photo of a dog") look like
the subject. Mean DINO similarity of those images to the subject's real photos; lower = the class prior
survived. pres_base is the same for the base model's class images of the same seeds (data/class_priors),
the level before any fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.layout import class_folder
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.images import open_images
from dreamstudy.metrics.similarity import mean_pairwise_cosine
from dreamstudy.sampling.priors import class_images

PRES_COLUMNS = ("method", "strategy", "subject", "pres", "pres_base", "n_pres")


def base_class_images(class_name: str, seeds: list[int], class_priors_dir: str | Path, seed: int,
                      where: str) -> list[Path]:
    """The base model's class images drawn from `seeds` (those the class_priors stage has made)."""
    specs = {spec.seed: spec for spec in class_images(class_name, len(seeds), seed)}
    unknown = [s for s in seeds if s not in specs]
    if unknown:
        raise ValueError(f"{where}: seed(s) {unknown} are not the first {len(seeds)} class-image seeds of "
                         f"{class_name!r} for params seed {seed}; was it sampled with another seed?")
    files = [class_folder(class_priors_dir, class_name) / specs[s].file for s in seeds]
    return [file for file in files if file.is_file()]


def preservation(pres_runs: Mapping[tuple[str, str, str], list[dict]], references: Mapping[str, list[Path]],
                 cache: EmbeddingCache, class_priors_dir: str | Path, seed: int) -> pd.DataFrame:
    """pres and pres_base per run (method, strategy, subject) from its PRES rows (each with "seed", "path").

    pres_base is NaN where data/class_priors holds none of the seeds' images."""
    records = []
    for (method, strategy, subject), rows in sorted(pres_runs.items()):
        real = cache.images("dino", references[subject])
        generated = cache.encoders.embed_images("dino", open_images(row["path"] for row in rows), cache.batch_size)
        base = base_class_images(SUBJECTS[subject], [row["seed"] for row in rows], class_priors_dir, seed,
                                 where=f"PRES images of {method}/{strategy}/{subject}")
        # class images are shared by every run of the class: the cache encodes them once
        pres_base = mean_pairwise_cosine(cache.images("dino", base), real) if base else math.nan
        records.append({"method": method, "strategy": strategy, "subject": subject,
                        "pres": mean_pairwise_cosine(generated, real), "pres_base": pres_base,
                        "n_pres": len(rows)})
    return pd.DataFrame.from_records(records, columns=list(PRES_COLUMNS))
