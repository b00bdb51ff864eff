"""DreamBench scores per generated image (DINO, CLIP-I, CLIP-T, memorization), DIV per prompt, and their means
per prompt, subject and run, and per prompt kind and live/object."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.data.dreambench import is_live
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.diversity import mean_pairwise_lpips
from dreamstudy.metrics.encoders import Encoders
from dreamstudy.metrics.images import open_images
from dreamstudy.metrics.memorization import is_memorized
from dreamstudy.metrics.similarity import nearest_cosine, pairwise_cosine, remove_identifier

SAMPLE_KEYS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
               "identifier", "image_index", "seed", "file")
SCORES = ("dino", "clip_i", "clip_t")
MEMORIZATION = ("mem_dino", "mem_clip_i", "memorized")
IMAGE_COLUMNS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
                 "image_index", "seed", "file")
PER_IMAGE_COLUMNS = IMAGE_COLUMNS + SCORES + ("live",) + MEMORIZATION
IMAGE_MEANS = SCORES + MEMORIZATION  # averaged per prompt, subject, run ("memorized" becomes a share)
BREAKDOWN_METRICS = SCORES + ("memorized",)
BREAKDOWN_COLUMNS = ("method", "strategy", "by", "group", "metric", "value")
RUN_KEYS = ["method", "strategy"]
SUBJECT_KEYS = RUN_KEYS + ["subject"]
PROMPT_KEYS = SUBJECT_KEYS + ["prompt_index"]
DEFAULT_THRESHOLD = 0.9


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
                     batch_size: int = 32, *, cache: EmbeddingCache | None = None,
                     memorization_threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """One row per generated image; dino and clip_i are its mean cosine to all of its subject's references,
    so their mean over images is the mean over all generated x reference pairs; mem_dino and mem_clip_i are
    its cosine to the closest reference (a training photo it may copy)."""
    for index, row in enumerate(samples):
        require_keys(row, SAMPLE_KEYS + ("path",), f"sample row {index}")
    check_references(samples, references)
    cache = cache or EmbeddingCache(encoders, batch_size=batch_size)
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
                "dino": pairwise_cosine(dino, reference_dino).mean(dim=1),
                "clip_i": pairwise_cosine(clip, reference_clip).mean(dim=1),
                "clip_t": (clip * prompts).sum(dim=1),  # raw cosine, not CLIPScore's 2.5x
                "mem_dino": nearest_cosine(dino, reference_dino),
                "mem_clip_i": nearest_cosine(clip, reference_clip),
            }
            for position, row in enumerate(batch):
                values = {name: column[position].item() for name, column in scores.items()}
                records.append({**{key: row[key] for key in IMAGE_COLUMNS}, **values, "live": is_live(subject),
                                "memorized": is_memorized(values["mem_dino"], memorization_threshold)})
    return pd.DataFrame.from_records(records, columns=list(PER_IMAGE_COLUMNS))


def prompt_diversity(samples: list[dict], encoders: Encoders) -> pd.DataFrame:
    """DIV per prompt of each run: mean pairwise LPIPS among the prompt's images (NaN below 2 images)."""
    records = []
    for keys, rows in sorted(_by(samples, *PROMPT_KEYS).items()):
        paths = [row["path"] for row in rows]
        records.append({**dict(zip(PROMPT_KEYS, keys)),
                        "div": mean_pairwise_lpips(encoders.lpips, open_images(paths), where=paths)})
    return pd.DataFrame.from_records(records, columns=[*PROMPT_KEYS, "div"])


def aggregate(per_image: pd.DataFrame, div: pd.DataFrame | None = None,
              pres: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Means per prompt and per subject, and the run summary {method: {strategy: scores}}.

    DINO, CLIP-I, CLIP-T and the memorized share are means over ALL images (the DreamBench convention, so
    subjects weigh by their number of images); div is the mean over prompts, pres and pres_base over
    subjects. `div` (per prompt) and `pres` (per subject) are NaN where not given."""
    require_keys(per_image.columns, PER_IMAGE_COLUMNS, "per-image scores")
    if per_image.empty:
        raise ValueError("per-image scores are empty: nothing to aggregate")
    per_prompt = _join(_means(per_image, PROMPT_KEYS, ["class", "live", "prompt_kind", "prompt"]),
                       div, PROMPT_KEYS, ["div"])
    per_subject = _means(per_image, SUBJECT_KEYS, ["class", "live"])
    per_subject = per_subject.merge(per_prompt.groupby(SUBJECT_KEYS)["div"].mean().reset_index(), on=SUBJECT_KEYS)
    per_subject = _join(per_subject, pres, SUBJECT_KEYS, ["pres", "pres_base"])
    per_prompt, per_subject = (_count_last(table) for table in (per_prompt, per_subject))

    summary: dict = defaultdict(dict)
    for (method, strategy), images in per_image.groupby(RUN_KEYS, sort=True):
        prompts = per_prompt[(per_prompt.method == method) & (per_prompt.strategy == strategy)]
        subjects = per_subject[(per_subject.method == method) & (per_subject.strategy == strategy)]
        summary[method][strategy] = {
            **{score: float(images[score].mean()) for score in SCORES},
            "div": float(prompts["div"].mean()),
            "pres": float(subjects["pres"].mean()),
            "pres_base": float(subjects["pres_base"].mean()),
            "memorized": float(images["memorized"].mean()),
            "n_images": len(images),
        }
    return per_prompt, per_subject, dict(summary)


def breakdown(per_image: pd.DataFrame) -> pd.DataFrame:
    """breakdown.csv: each run's mean over images per prompt kind and per live/object subject, long format."""
    require_keys(per_image.columns, PER_IMAGE_COLUMNS, "per-image scores")
    groups = {"prompt_kind": per_image["prompt_kind"],
              "live": per_image["live"].map({True: "live", False: "object"})}
    parts = []
    for by, group in groups.items():
        means = (per_image.assign(group=group)
                 .groupby([*RUN_KEYS, "group"], sort=True)[list(BREAKDOWN_METRICS)].mean().reset_index()
                 .melt(id_vars=[*RUN_KEYS, "group"], var_name="metric", value_name="value"))
        parts.append(means.assign(by=by))
    return pd.concat(parts, ignore_index=True)[list(BREAKDOWN_COLUMNS)]


def _by(rows: list[dict], *keys: str) -> dict:
    """Rows grouped by the values of `keys` (one key: the value itself), in first-seen order."""
    groups: dict = defaultdict(list)
    for row in rows:
        groups[row[keys[0]] if len(keys) == 1 else tuple(row[key] for key in keys)].append(row)
    return groups


def _join(table: pd.DataFrame, extra: pd.DataFrame | None, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """`table` with `extra`'s `columns` matched on `keys`; NaN where `extra` has no row (or is None)."""
    if extra is None:
        return table.assign(**{column: math.nan for column in columns})
    return table.merge(extra[keys + columns], on=keys, how="left", validate="one_to_one")


def _count_last(table: pd.DataFrame) -> pd.DataFrame:
    return table[[column for column in table.columns if column != "n_images"] + ["n_images"]]


def _means(per_image: pd.DataFrame, keys: list[str], constants: list[str]) -> pd.DataFrame:
    """Score means and image counts per group; `constants` are columns fixed within a group."""
    return per_image.groupby(keys, sort=True).agg(
        **{column: (column, "first") for column in constants},
        **{score: (score, "mean") for score in IMAGE_MEANS},
        n_images=(SCORES[0], "size"),
    ).reset_index()
