"""PRES, prior preservation: how much a fine-tuned model's plain class images ("a photo of a dog") look like
the subject. Mean DINO similarity of those images to the subject's real photos; lower = the class prior
survived. pres_base is the same for the base model's class images of the same seeds (data/class_priors),
the level before any fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path

from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.images import open_images
from dreamstudy.metrics.similarity import mean_pairwise_cosine
from dreamstudy.sampling.protocol import class_images


def base_class_images(class_name: str, seeds: list[int], folder: str | Path, seed: int, where: str) -> list[Path]:
    """The base model's class images drawn from `seeds` that the class_priors stage has made in `folder`."""
    specs = {spec.seed: spec for spec in class_images(class_name, len(seeds), seed)}
    unknown = [s for s in seeds if s not in specs]
    if unknown:
        raise ValueError(f"{where}: seed(s) {unknown} are not the first {len(seeds)} class-image seeds of "
                         f"{class_name!r} for params seed {seed}; was it sampled with another seed?")
    files = [Path(folder) / specs[s].file for s in seeds]
    return [file for file in files if file.is_file()]


def preservation(pres_images: list[Path], base_images: list[Path], references: list[Path], cache: EmbeddingCache,
                 batch_size: int = 32) -> dict:
    """{"pres", "pres_base", "n_pres"} of one run from its PRES images and the base model's class images of
    the same seeds; pres is NaN without PRES images, pres_base without class images."""
    real = cache.images("dino", references)
    pres = pres_base = math.nan
    if pres_images:
        pres = mean_pairwise_cosine(cache.encoders.embed_images("dino", open_images(pres_images), batch_size), real)
    if base_images:
        # class images are shared by every run of the class: the cache encodes them once
        pres_base = mean_pairwise_cosine(cache.images("dino", base_images), real)
    return {"pres": pres, "pres_base": pres_base, "n_pres": len(pres_images)}
