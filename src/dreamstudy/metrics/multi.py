"""The multi-concept study's scores of one run (a pair's samples from one variant), by the main study's
encoders: per image, each subject's DINO and CLIP-I (the whole image against that subject's real photos, as
CustomConcept101 scores it), their mean and their minimum over the two subjects (an image that shows only one
of them scores low on the minimum), CLIP-T (the prompt without the identifiers, as the main study) and
CLIPScore beside it for the published comparison; DIV per prompt. On detector crops (metrics/detector.py): each
found subject's DINO and CLIP-I against its own photos, whether both subjects are found, and identity mixing
(a subject's crop closer, by DINO, to the other subject's photos than to its own). The whole study's tables and
intervals: multi_study.py. Retention: each subject alone from the pair's model, scored as the main study scores
a run (metrics.evaluate), beside its single-concept model's scores of the same prompts and seeds."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import read_jsonl
from dreamstudy.layout import Run, key_subjects
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.detector import Box
from dreamstudy.metrics.diversity import mean_pairwise_lpips
from dreamstudy.metrics.encoders import Encoders
from dreamstudy.metrics.evaluate import evaluate_samples
from dreamstudy.metrics.images import open_images
from dreamstudy.metrics.multi_study import PAIR_IMAGE_KEYS, PER_SUBJECT, PROMPT_KEYS, retention_table
from dreamstudy.metrics.registry import (
    BOTH_FOUND,
    CLIP_I_MEAN,
    CLIP_I_MIN,
    CLIP_SCORE,
    CLIP_T,
    CROP_CLIP_I,
    CROP_DINO,
    DINO_MEAN,
    DINO_MIN,
    DIV,
    MIXING,
    MULTI_IMAGE_METRICS,
)
from dreamstudy.metrics.run import read_run
from dreamstudy.metrics.scores import read_scores
from dreamstudy.metrics.similarity import pairwise_cosine, remove_identifier
from dreamstudy.metrics.tables import require_keys
from dreamstudy.multi.variants import sample_label
from dreamstudy.sampling.protocol import SAMPLES

PAIR_SAMPLE_KEYS = ("subject", "variant", "regions", "subjects", "tokens", "prompt_index", "prompt_kind", "prompt",
                    "image_index", "seed", "file", "model")
CLIP_SCORE_WEIGHT = 2.5  # CLIPScore (Hessel et al. 2021): 2.5 x max(cosine, 0), as CustomConcept101 reports


def read_pair_samples(samples_dir: str | Path) -> list[dict]:
    """samples.jsonl of a sample_multi run, each row checked and given its image's absolute "path"."""
    file = Path(samples_dir) / SAMPLES
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no samples (run the sample_multi stage first)")
    rows = read_jsonl(file)
    if not rows:
        raise ValueError(f"{file}: no rows")
    for line, row in enumerate(rows, start=1):
        require_keys(row, PAIR_SAMPLE_KEYS, f"{file}:{line}")
        path = file.parent / row["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{file}:{line}: image {str(path)!r} not found")
        row["path"] = str(path.resolve())
    return rows


def run_of(row: Mapping) -> dict:
    return {"variant": sample_label(row["variant"], row["regions"]), "pair": row["subject"]}


def clip_t_text(row: Mapping) -> str:
    """The prompt without either subject's identifier: "a dog wearing a backpack on a beach"."""
    text = row["prompt"]
    for token in row["tokens"]:
        text = remove_identifier(text, token)
    return text


# images and the pair's subjects -> per image, each subject's box or None (detector.SubjectFinder)
Finder = Callable[[Sequence[Image.Image], Sequence[str]], list[list[Box | None]]]


def crop_square(image: Image.Image, box: Box) -> Image.Image:
    """The square around the box's centre with the box's longer side (inside the image, at least a pixel): the
    encoders centre-crop a square, which would cut the ends of a long box."""
    width, height = image.size
    side = round(min(max(box.x1 - box.x0, box.y1 - box.y0, 1), width, height))
    left = min(max(round((box.x0 + box.x1 - side) / 2), 0), width - side)
    top = min(max(round((box.y0 + box.y1 - side) / 2), 0), height - side)
    return image.crop((left, top, left + side, top + side))


def crop_scores(images: Sequence[Image.Image], subjects: Sequence[str], found: list[list[Box | None]],
                refs: Mapping[str, list[torch.Tensor]], encoders: Encoders, batch_size: int) -> list[dict]:
    """Per image of a pair: each subject's box and score, its crop's DINO and CLIP-I against its own photos, whether
    the crop is closer (DINO) to the other subject's photos (`mixed`), and CROP_METRICS. Two found subjects of one
    class (two dogs) take the two boxes in the order that makes each crop most like its own subject."""
    crops = {(i, k): n for n, (i, k) in enumerate((i, k) for i, boxes in enumerate(found)
                                                   for k, box in enumerate(boxes) if box is not None)}
    alike = {}  # [crops, subjects]: each crop's mean cosine to each subject's photos
    if crops:
        pictures = [crop_square(images[i], found[i][k]) for i, k in crops]
        for which in ("dino", "clip"):
            embedded = encoders.embed_images(which, pictures, batch_size)
            alike[which] = torch.stack([pairwise_cosine(embedded, r).mean(dim=1) for r in refs[which]], dim=1)
    one_class = SUBJECTS[subjects[0]] == SUBJECTS[subjects[1]]
    records = []
    for i, boxes in enumerate(found):
        crop_of = {k: crops[i, k] for k, box in enumerate(boxes) if box is not None}  # subject -> crop
        if one_class and len(crop_of) == 2:
            (a, b), dino = (crop_of[0], crop_of[1]), alike["dino"]
            if dino[a, 1] + dino[b, 0] > dino[a, 0] + dino[b, 1]:
                crop_of, boxes = {0: b, 1: a}, boxes[::-1]
        record = {}
        for k in range(2):
            crop, box = crop_of.get(k), boxes[k]
            record |= {f"box_{k + 1}": box.text() if box else "", f"score_{k + 1}": box.score if box else math.nan,
                       f"crop_dino_{k + 1}": alike["dino"][crop, k].item() if box else math.nan,
                       f"crop_clip_i_{k + 1}": alike["clip"][crop, k].item() if box else math.nan,
                       f"mixed_{k + 1}": float(alike["dino"][crop, 1 - k] > alike["dino"][crop, k]) if box
                       else math.nan}
        found_k = [k + 1 for k in range(2) if boxes[k]]
        record |= {BOTH_FOUND.name: float(len(found_k) == 2),
                   **{metric.name: _mean(record[f"{prefix}_{k}"] for k in found_k)
                      for metric, prefix in ((CROP_DINO, "crop_dino"), (CROP_CLIP_I, "crop_clip_i"),
                                             (MIXING, "mixed"))}}
        records.append(record)
    return records


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def evaluate_pair(samples: list[dict], references: Mapping[str, list[Path]], encoders: Encoders,
                  batch_size: int, cache: EmbeddingCache, finder: Finder) -> pd.DataFrame:
    """One row per image: PAIR_IMAGE_KEYS, each subject's DINO and CLIP-I of the whole image and of its crop
    (`finder`'s box), and MULTI_IMAGE_METRICS."""
    subjects = samples[0]["subjects"]
    refs = {which: [cache.images(which, references[s]) for s in subjects] for which in ("dino", "clip")}
    texts = sorted({clip_t_text(row) for row in samples})
    text_embedding = dict(zip(texts, encoders.embed_texts(texts, batch_size)))
    records = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        images = open_images(row["path"] for row in batch)
        embedded = {"clip": encoders.embed_images_clip(images, batch_size),
                    "dino": encoders.embed_images_dino(images, batch_size)}
        # [images, subjects]: each image's mean cosine to each subject's photos
        alike = {which: torch.stack([pairwise_cosine(embedded[which], r).mean(dim=1) for r in refs[which]], dim=1)
                 for which in ("dino", "clip")}
        clip_t = (embedded["clip"] * torch.stack([text_embedding[clip_t_text(row)] for row in batch])).sum(dim=1)
        scores = {"dino_1": alike["dino"][:, 0], "dino_2": alike["dino"][:, 1],
                  "clip_i_1": alike["clip"][:, 0], "clip_i_2": alike["clip"][:, 1],
                  DINO_MEAN.name: alike["dino"].mean(dim=1), DINO_MIN.name: alike["dino"].min(dim=1).values,
                  CLIP_I_MEAN.name: alike["clip"].mean(dim=1), CLIP_I_MIN.name: alike["clip"].min(dim=1).values,
                  CLIP_T.name: clip_t, CLIP_SCORE.name: CLIP_SCORE_WEIGHT * clip_t.clamp(min=0)}
        crops = crop_scores(images, subjects, finder(images, subjects), refs, encoders, batch_size)
        for position, row in enumerate(batch):
            records.append({**run_of(row), **{key: row[key] for key in PAIR_IMAGE_KEYS[2:]},
                            **{name: column[position].item() for name, column in scores.items()},
                            **crops[position]})
    columns = [*PAIR_IMAGE_KEYS, *PER_SUBJECT, *(m.name for m in MULTI_IMAGE_METRICS)]
    return pd.DataFrame.from_records(records, columns=columns)


def pair_diversity(samples: list[dict], encoders: Encoders) -> pd.DataFrame:
    """DIV per prompt: mean pairwise LPIPS among the prompt's images (NaN below 2 images)."""
    records = []
    for index in sorted({row["prompt_index"] for row in samples}):
        rows = [row for row in samples if row["prompt_index"] == index]
        paths = [row["path"] for row in rows]
        records.append({**run_of(rows[0]), "prompt_index": index,
                        DIV.name: mean_pairwise_lpips(encoders.lpips, open_images(paths), where=paths)})
    return pd.DataFrame.from_records(records, columns=[*PROMPT_KEYS, DIV.name])



def retention_scores(dataset_dir: Path, retention_dir: Path, variant: str, pair: str,
                     single: Mapping[str, tuple[Path, Run]], encoders: Encoders, batch_size: int,
                     cache: EmbeddingCache, seed: int) -> pd.DataFrame:
    """`multi_study.retention_table` of each subject of `pair`: its samples alone from the pair's `variant`
    model (retention_dir/<subject>, run key (variant, pair, subject)) against its single-concept run's per-image
    scores, `single[subject]` = (score folder, run key) of the main study."""
    tables = []
    for subject in key_subjects(pair):
        run = (variant, pair, subject)
        inputs = read_run(dataset_dir, retention_dir / subject, retention_dir / subject, run, seed)  # no PRES
        alone = evaluate_samples(inputs.samples, {subject: inputs.references}, encoders, batch_size, cache=cache)
        folder, single_run = single[subject]
        tables.append(retention_table(variant, pair, alone, read_scores(folder, single_run).per_image,
                                      where=f"{retention_dir / subject} against {folder}"))
    return pd.concat(tables, ignore_index=True)
