"""DreamBench scores per generated image (DINO, CLIP-I, CLIP-T, closeness to the training photos), DIV per
prompt, and the "Real images" upper bound (how alike a subject's own photos are), by the encoders."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.data.dreambench import SUBJECTS, is_live
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.diversity import mean_pairwise_lpips
from dreamstudy.metrics.encoders import Encoders
from dreamstudy.metrics.images import open_images
from dreamstudy.metrics.registry import CLIP_I, CLIP_T, DINO, DIV, MEM_CLIP_I, MEM_DINO
from dreamstudy.metrics.similarity import mean_self_cosine, nearest_cosine, pairwise_cosine, remove_identifier
from dreamstudy.metrics.tables import (
    DIV_COLUMNS,
    IMAGE_COLUMNS,
    IMAGE_SCORE_COLUMNS,
    PROMPT_KEYS,
    REAL_IMAGE_COLUMNS,
    require_keys,
)

SAMPLE_KEYS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
               "identifier", "image_index", "seed", "file")


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
                     batch_size: int = 32, *, cache: EmbeddingCache | None = None) -> pd.DataFrame:
    """One row per generated image; dino and clip_i are its mean cosine to all of its subject's references,
    so their mean over images is the mean over all generated x reference pairs; mem_dino and mem_clip_i are
    its cosine to the closest reference (a training photo it may copy; the gather stage thresholds it)."""
    for index, row in enumerate(samples):
        require_keys(row, SAMPLE_KEYS + ("path",), f"sample row {index}")
    check_references(samples, references)
    cache = cache or EmbeddingCache(encoders)
    texts = sorted({clip_t_text(row) for row in samples})
    text_embedding = dict(zip(texts, encoders.embed_texts(texts, batch_size)))

    records = []
    for subject, rows in _by(samples, "subject").items():
        reference_clip = cache.images("clip", references[subject])
        reference_dino = cache.images("dino", references[subject])
        # One batch of decoded images at a time keeps memory flat for thousands of samples.
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            images = open_images(row["path"] for row in batch)
            clip = encoders.embed_images_clip(images, batch_size)
            dino = encoders.embed_images_dino(images, batch_size)
            prompts = torch.stack([text_embedding[clip_t_text(row)] for row in batch])
            scores = {
                DINO.name: pairwise_cosine(dino, reference_dino).mean(dim=1),
                CLIP_I.name: pairwise_cosine(clip, reference_clip).mean(dim=1),
                CLIP_T.name: (clip * prompts).sum(dim=1),  # raw cosine, not CLIPScore's 2.5x
                MEM_DINO.name: nearest_cosine(dino, reference_dino),
                MEM_CLIP_I.name: nearest_cosine(clip, reference_clip),
            }
            for position, row in enumerate(batch):
                values = {name: column[position].item() for name, column in scores.items()}
                records.append({**{key: row[key] for key in IMAGE_COLUMNS}, **values, "live": is_live(subject)})
    return pd.DataFrame.from_records(records, columns=list(IMAGE_SCORE_COLUMNS))


def prompt_diversity(samples: list[dict], encoders: Encoders) -> pd.DataFrame:
    """DIV per prompt of each run: mean pairwise LPIPS among the prompt's images (NaN below 2 images)."""
    records = []
    for keys, rows in sorted(_by(samples, *PROMPT_KEYS).items()):
        paths = [row["path"] for row in rows]
        records.append({**dict(zip(PROMPT_KEYS, keys)),
                        DIV.name: mean_pairwise_lpips(encoders.lpips, open_images(paths), where=paths)})
    return pd.DataFrame.from_records(records, columns=list(DIV_COLUMNS))


def real_images(subjects: Iterable[str], references: Mapping[str, list[Path]], cache: EmbeddingCache) -> pd.DataFrame:
    """Per subject, the mean DINO and CLIP-I similarity among its own real photos (pairs i != j): the
    DreamBooth paper's "Real images" row. NaN for a subject with a single photo."""
    rows = []
    for subject in sorted(set(subjects)):
        rows.append({"subject": subject, "class": SUBJECTS[subject], "live": is_live(subject),
                     **{score.name: mean_self_cosine(cache.images(which, references[subject]))
                        for score, which in ((DINO, "dino"), (CLIP_I, "clip"))},
                     "n_images": len(references[subject])})
    return pd.DataFrame.from_records(rows, columns=list(REAL_IMAGE_COLUMNS))


def _by(rows: list[dict], *keys: str) -> dict:
    """Rows grouped by the values of `keys` (one key: the value itself), in first-seen order."""
    groups: dict = defaultdict(list)
    for row in rows:
        groups[row[keys[0]] if len(keys) == 1 else tuple(row[key] for key in keys)].append(row)
    return groups
