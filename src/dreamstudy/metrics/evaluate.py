"""DreamBench scores per generated image (DINO, CLIP-I, CLIP-T), and their means per prompt, subject, run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dreamstudy.data.dreambench import LIVE_CLASSES
from dreamstudy.metrics.encoders import Encoders
from dreamstudy.metrics.similarity import pairwise_cosine, remove_identifier

SAMPLE_KEYS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
               "identifier", "image_index", "seed", "file")
SCORES = ("dino", "clip_i", "clip_t")
IMAGE_COLUMNS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
                 "image_index", "seed", "file")
PER_IMAGE_COLUMNS = IMAGE_COLUMNS + SCORES
RUN_KEYS = ["method", "strategy"]
SUBJECT_KEYS = RUN_KEYS + ["subject"]
PROMPT_KEYS = SUBJECT_KEYS + ["prompt_index"]


def require_keys(row: Mapping, keys: Iterable[str], where: str) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


def check_references(samples: list[dict], references: Mapping[str, list[Path]]) -> None:
    """Every sampled subject needs reference images, or DINO and CLIP-I are undefined."""
    lacking = sorted({row["subject"] for row in samples if not references.get(row["subject"])})
    if lacking:
        example = next(row.get("path", row["file"]) for row in samples if row["subject"] in lacking)
        raise ValueError(f"no reference images for subject(s) {lacking} (sampled e.g. in {example}); "
                         f"subjects with references: {sorted(references)}")


def clip_t_text(sample: Mapping) -> str:
    return remove_identifier(sample["prompt"], sample["identifier"])


def evaluate_samples(samples: list[dict], references: Mapping[str, list[Path]], encoders: Encoders,
                     batch_size: int = 32) -> pd.DataFrame:
    """One row per generated image; dino and clip_i are its mean cosine to all of its subject's references,
    so their mean over images is the mean over all generated x reference pairs."""
    for index, row in enumerate(samples):
        require_keys(row, SAMPLE_KEYS + ("path",), f"sample row {index}")
    check_references(samples, references)
    texts = sorted({clip_t_text(row) for row in samples})
    text_embedding = dict(zip(texts, encoders.embed_texts(texts, batch_size)))

    by_subject: dict[str, list[dict]] = defaultdict(list)
    for row in samples:
        by_subject[row["subject"]].append(row)
    records = []
    for subject, rows in by_subject.items():
        reference_images = _open_images(references[subject])
        reference_clip = encoders.embed_images_clip(reference_images, batch_size)
        reference_dino = encoders.embed_images_dino(reference_images, batch_size)
        # One batch of decoded images at a time keeps memory flat for thousands of samples.
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            images = _open_images(row["path"] for row in batch)
            clip = encoders.embed_images_clip(images, batch_size)
            dino = encoders.embed_images_dino(images, batch_size)
            prompts = torch.stack([text_embedding[clip_t_text(row)] for row in batch])
            scores = {
                "dino": pairwise_cosine(dino, reference_dino).mean(dim=1),
                "clip_i": pairwise_cosine(clip, reference_clip).mean(dim=1),
                "clip_t": (clip * prompts).sum(dim=1),  # raw cosine, not CLIPScore's 2.5x
            }
            for position, row in enumerate(batch):
                records.append({**{key: row[key] for key in IMAGE_COLUMNS},
                                **{name: values[position].item() for name, values in scores.items()}})
    return pd.DataFrame.from_records(records, columns=list(PER_IMAGE_COLUMNS))


def aggregate(per_image: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Means per prompt and per subject, and the run summary {method: {strategy: scores}} over ALL images
    (the DreamBench convention, so subjects weigh by their number of images)."""
    require_keys(per_image.columns, PER_IMAGE_COLUMNS, "per-image scores")
    if per_image.empty:
        raise ValueError("per-image scores are empty: nothing to aggregate")
    per_prompt = _means(per_image, PROMPT_KEYS, ["class", "prompt_kind", "prompt"])
    per_subject = _means(per_image, SUBJECT_KEYS, ["class"])
    per_subject.insert(per_subject.columns.get_loc("class") + 1, "live", per_subject["class"].isin(LIVE_CLASSES))
    summary: dict = defaultdict(dict)
    for row in _means(per_image, RUN_KEYS, []).itertuples(index=False):
        summary[row.method][row.strategy] = {
            **{score: float(getattr(row, score)) for score in SCORES}, "n_images": int(row.n_images)}
    return per_prompt, per_subject, dict(summary)


def _means(per_image: pd.DataFrame, keys: list[str], constants: list[str]) -> pd.DataFrame:
    """Score means and image counts per group; `constants` are columns fixed within a group."""
    return per_image.groupby(keys, sort=True).agg(
        **{column: (column, "first") for column in constants},
        **{score: (score, "mean") for score in SCORES},
        n_images=(SCORES[0], "size"),
    ).reset_index()


def _open_images(paths: Iterable[str | Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
