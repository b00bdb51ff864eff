"""The study's tables from per-image scores: which images count as memorized, means per prompt, subject and
run (DreamBench's DINO, CLIP-I, CLIP-T, with DIV, PRES and memorization), and per prompt kind and live/object.

Pandas only, no model: the gather stage builds these from every run's scores without importing torch."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from dreamstudy.metrics.registry import LEVELS, MEM_DINO, MEMORIZED, METRICS

BY_LEVEL = {level: tuple(m.name for m in METRICS if m.level == level) for level in LEVELS}  # averaged from there up
SCORES = tuple(m.name for m in METRICS if m.table == "main")  # DreamBench's DINO, CLIP-I, CLIP-T
REPORTED = tuple(m for m in METRICS if m.table)  # in the report's tables, per_subject.csv and the run summary
BREAKDOWN_METRICS = tuple(m.name for m in REPORTED if m.level == "image")
REAL_IMAGE_SCORES = tuple(m.name for m in METRICS if m.real_images)
IMAGE_COLUMNS = ("subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt",
                 "image_index", "seed", "file")
# a run's per-image scores (evaluate): DreamBench's, `live`, then the others but `memorized` (the gather's)
IMAGE_SCORE_COLUMNS = IMAGE_COLUMNS + SCORES + ("live",) + tuple(
    name for name in BY_LEVEL["image"] if name not in (*SCORES, MEMORIZED.name))
PER_IMAGE_COLUMNS = IMAGE_SCORE_COLUMNS + (MEMORIZED.name,)  # the study's per_image.csv (gather)
BREAKDOWN_COLUMNS = ("method", "strategy", "by", "group", "metric", "value")
RUN_KEYS = ["method", "strategy"]
SUBJECT_KEYS = RUN_KEYS + ["subject"]
PROMPT_KEYS = SUBJECT_KEYS + ["prompt_index"]
DIV_COLUMNS = (*PROMPT_KEYS, *BY_LEVEL["prompt"])
PRES_COLUMNS = (*SUBJECT_KEYS, *BY_LEVEL["subject"], "n_pres")
REAL_IMAGE_COLUMNS = ("subject", "class", "live", *REAL_IMAGE_SCORES, "n_images")


def require_keys(row: Mapping | Iterable[str], keys: Iterable[str], where: str) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


def with_memorized(scores: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per-image scores with `memorized`: a sample whose DINO similarity to some training photo exceeds
    `threshold` counts as a copy."""
    return scores.assign(**{MEMORIZED.name: scores[MEM_DINO.name] > threshold})


def aggregate(per_image: pd.DataFrame, div: pd.DataFrame | None = None,
              pres: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Means per prompt and per subject, and the run summary {method: {strategy: {metric: mean}}} of REPORTED.

    A metric of images (DINO, CLIP-I, CLIP-T, the memorized share) is the mean over ALL images (the DreamBench
    convention, so subjects weigh by their number of images), of prompts (div) the mean over prompts, of
    subjects (pres, pres_base) the mean over subjects. `div` (per prompt) and `pres` (per subject) are NaN
    where not given."""
    require_keys(per_image.columns, PER_IMAGE_COLUMNS, "per-image scores")
    if per_image.empty:
        raise ValueError("per-image scores are empty: nothing to aggregate")
    per_prompt = _join(_means(per_image, PROMPT_KEYS, ["class", "live", "prompt_kind", "prompt"]),
                       div, PROMPT_KEYS, list(BY_LEVEL["prompt"]))
    per_subject = _means(per_image, SUBJECT_KEYS, ["class", "live"])
    per_subject = per_subject.merge(per_prompt.groupby(SUBJECT_KEYS)[list(BY_LEVEL["prompt"])].mean().reset_index(),
                                    on=SUBJECT_KEYS)
    per_subject = _join(per_subject, pres, SUBJECT_KEYS, list(BY_LEVEL["subject"]))
    per_prompt, per_subject = (_count_last(table) for table in (per_prompt, per_subject))

    summary: dict = defaultdict(dict)
    for (method, strategy), images in per_image.groupby(RUN_KEYS, sort=True):
        values = {"image": images,
                  "prompt": per_prompt[(per_prompt.method == method) & (per_prompt.strategy == strategy)],
                  "subject": per_subject[(per_subject.method == method) & (per_subject.strategy == strategy)]}
        summary[method][strategy] = {**{m.name: float(values[m.level][m.name].mean()) for m in REPORTED},
                                     "n_images": len(images)}
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
        **{score: (score, "mean") for score in BY_LEVEL["image"]},
        n_images=(SCORES[0], "size"),
    ).reset_index()


def read_table(path: Path, columns, *, text: dict, writer: str, error: type[Exception] = ValueError,
               allow_empty: bool = False) -> pd.DataFrame:
    """A CSV file that must hold `columns` (and rows, unless `allow_empty`), `text` columns read as text;
    `error` names the file and, where it is missing, the stage that writes it (`writer`)."""
    if not path.is_file():
        raise error(f"{path}: missing (written by {writer})")
    try:
        table = pd.read_csv(path, dtype=text)
    except pd.errors.EmptyDataError:
        raise error(f"{path}: empty file (expected a header with {list(columns)})") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise error(f"{path}: missing column(s) {missing}")
    if table.empty and not allow_empty:
        raise error(f"{path}: no rows")
    return table
