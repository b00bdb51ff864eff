"""The multi-concept study's tables from every run's scores (metrics/multi.py): per image, per prompt, each
variant's mean over pairs with a hierarchical bootstrap interval (pairs, then prompts within a pair), paired
tests against joint training, and retention (each subject alone from the pair's model against its own
single-concept model, image by image). No torch: the gather_multi stage loads no model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dreamstudy.io import atomic_dir, write_json
from dreamstudy.metrics.registry import CLIP_I, CLIP_T, DINO, MULTI_IMAGE_METRICS, MULTI_METRICS
from dreamstudy.metrics.scores import ENCODERS
from dreamstudy.metrics.statistics import hierarchical_bootstrap, paired_wilcoxon
from dreamstudy.metrics.study import json_numbers
from dreamstudy.seeding import derive_seed

RUN_KEYS = ("variant", "pair")  # a run of the multi-concept study: its sample label ("lora_sum@regions") and pair
PROMPT_KEYS = (*RUN_KEYS, "prompt_index")
PAIR_IMAGE_KEYS = (*PROMPT_KEYS, "prompt_kind", "prompt", "image_index", "seed", "file", "model")
# by the subject's place in the pair: the whole image's, then its detection (box "x0 y0 x1 y1" in pixels, empty
# where not found) and crop's (`mixed`: 1 where the crop is closer to the other subject's photos)
PER_SUBJECT = ("dino_1", "dino_2", "clip_i_1", "clip_i_2", "box_1", "box_2", "score_1", "score_2", "crop_dino_1",
               "crop_dino_2", "crop_clip_i_1", "crop_clip_i_2", "mixed_1", "mixed_2")
STATS_COLUMNS = ("variant", "metric", "mean", "ci_low", "ci_high", "confidence", "n_pairs")
TESTS_COLUMNS = ("variant", "baseline", "metric", "mean_diff", "p_value", "test", "n_pairs", "significant", "alpha",
                 "note")
IMAGES, DIVERSITY, RETENTION = "images.csv", "div.csv", "retention.csv"  # a run's score files (retention: plain
# variants only)
RETAINED = (DINO, CLIP_I, CLIP_T)  # retention's measures, of each subject alone
RETENTION_KEYS = ("subject", "prompt_index", "image_index")  # an image of the pair model's and the single model's
RETENTION_COLUMNS = (*RUN_KEYS, "subject", "prompt_index", "prompt", "image_index", "seed",
                     *(m.name for m in RETAINED), *(f"{m.name}_single" for m in RETAINED))
RETENTION_STATS_COLUMNS = ("variant", "metric", "mean", "single", "mean_diff", "ci_low", "ci_high", "confidence",
                           "p_value", "significant", "alpha", "n_pairs", "note")


def retention_table(variant: str, pair: str, alone: pd.DataFrame, single: pd.DataFrame, where: str) -> pd.DataFrame:
    """Each image of a subject alone from the pair's model (`alone`, per-image scores of metrics.evaluate) beside
    the same prompt and seed from that subject's single-concept model (`single`, its main-study per-image scores):
    RETENTION_COLUMNS. ValueError, naming `where`, if an image has no counterpart or another seed: the two were
    not sampled by one protocol (data.prompts_per_subject, sample.images_per_prompt, seed)."""
    keys = list(RETENTION_KEYS)
    scores = [m.name for m in RETAINED]
    merged = alone[[*keys, "prompt", "seed", *scores]].merge(
        single[[*keys, "seed", *scores]], on=keys, how="left", suffixes=("", "_single"), validate="one_to_one",
        indicator=True)
    unmatched = merged[(merged["_merge"] != "both") | (merged["seed"] != merged["seed_single"])]
    if len(unmatched):
        row = unmatched.iloc[0]
        raise ValueError(f"{where}: {len(unmatched)} image(s) without the same prompt and seed in the single-concept "
                         f"run, e.g. {row.subject} prompt {row.prompt_index} image {row.image_index}; sample both with "
                         "the same data.prompts_per_subject, sample.images_per_prompt and seed")
    merged = merged.assign(variant=variant, pair=pair)
    return merged[list(RETENTION_COLUMNS)]


def retention_stats(table: pd.DataFrame, seed: int, n_boot: int, confidence: float,
                    alpha: float) -> pd.DataFrame:
    """Per variant and retained measure: the mean over pairs of the pair model's score, of the single-concept
    models' on the same prompts and seeds, and of their difference, with a hierarchical bootstrap interval of the
    difference (pairs, then a pair's prompts of both subjects) and a Wilcoxon signed-rank test of the per-pair
    mean differences against 0 (a merge that keeps each identity intact differs by nothing)."""
    records = []
    for variant, runs in table.groupby("variant", sort=True):
        for metric in RETAINED:
            scored = runs.assign(diff=runs[metric.name] - runs[f"{metric.name}_single"])
            per_prompt = scored.groupby(["pair", "subject", "prompt_index"], sort=True)[
                [metric.name, f"{metric.name}_single", "diff"]].mean()
            groups = [group["diff"].to_numpy() for _, group in per_prompt.groupby("pair", sort=True)]
            rng = np.random.default_rng(derive_seed(seed, "bootstrap", "retention", variant, metric.name))
            mean_diff, low, high = hierarchical_bootstrap(groups, rng, n_boot, confidence)
            per_pair = per_prompt.groupby("pair", sort=True).mean()
            p_value, note = paired_wilcoxon(per_pair["diff"].to_numpy())
            records.append({"variant": variant, "metric": metric.name, "mean": per_pair[metric.name].mean(),
                            "single": per_pair[f"{metric.name}_single"].mean(), "mean_diff": mean_diff,
                            "ci_low": low, "ci_high": high, "confidence": confidence, "p_value": p_value,
                            "significant": bool(p_value < alpha) if not math.isnan(p_value) else False,
                            "alpha": alpha, "n_pairs": len(groups), "note": note})
    return pd.DataFrame.from_records(records, columns=list(RETENTION_STATS_COLUMNS))


def read_retention(folders: list[Path]) -> pd.DataFrame:
    """The retention tables of the score folders that have one (plain variants'), concatenated."""
    tables = [pd.read_csv(f / RETENTION) for f in folders if (f / RETENTION).is_file()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(RETENTION_COLUMNS))


def read_scores(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(per image, per prompt, encoders.json) of the runs whose score folders are `folders`; per prompt: the
    image metrics' means over the prompt's images, with its DIV."""
    missing = [str(f / name) for f in folders for name in (IMAGES, DIVERSITY, ENCODERS) if not (f / name).is_file()]
    if missing:
        raise FileNotFoundError(f"score files missing (run the evaluate_multi stage first): {missing[:3]}")
    per_image = pd.concat([pd.read_csv(f / IMAGES) for f in folders], ignore_index=True)
    div = pd.concat([pd.read_csv(f / DIVERSITY) for f in folders], ignore_index=True)
    means = per_image.groupby(list(PROMPT_KEYS), sort=True)[[m.name for m in MULTI_IMAGE_METRICS]].mean()
    per_prompt = means.reset_index().merge(div, on=list(PROMPT_KEYS), how="left", validate="one_to_one")
    encoders = [json.loads((f / ENCODERS).read_text()) for f in folders]
    if any(e != encoders[0] for e in encoders):
        raise ValueError(f"the runs were scored by different encoders: {sorted(set(map(str, encoders)))}; rerun "
                         "the evaluate_multi stages")
    return per_image, per_prompt, encoders[0]


def multi_stats(per_prompt: pd.DataFrame, seed: int, n_boot: int, confidence: float) -> pd.DataFrame:
    """Each variant's mean of each metric over pairs, with a hierarchical bootstrap interval: pairs, and within
    each drawn pair its prompts, resampled."""
    records = []
    for variant, runs in per_prompt.groupby("variant", sort=True):
        for metric in MULTI_METRICS:
            groups = [group[metric.name].to_numpy() for _, group in runs.groupby("pair", sort=True)]
            rng = np.random.default_rng(derive_seed(seed, "bootstrap", "multi", variant, metric.name))
            mean, low, high = hierarchical_bootstrap(groups, rng, n_boot, confidence)
            records.append({"variant": variant, "metric": metric.name, "mean": mean, "ci_low": low, "ci_high": high,
                            "confidence": confidence, "n_pairs": len(groups)})
    return pd.DataFrame.from_records(records, columns=list(STATS_COLUMNS))


def multi_tests(per_prompt: pd.DataFrame, baseline: str | None, alpha: float) -> pd.DataFrame:
    """Every variant against `baseline` (joint training), Wilcoxon signed-rank on the per-pair differences of
    per-pair means (same pairs, prompts and seeds); empty without a baseline."""
    records = []
    per_pair = per_prompt.groupby(["variant", "pair"], sort=True)[[m.name for m in MULTI_METRICS]].mean()
    variants = per_pair.index.get_level_values("variant").unique()
    if baseline not in variants:
        return pd.DataFrame(columns=list(TESTS_COLUMNS))
    for variant in variants.drop(baseline):
        paired = per_pair.loc[variant] - per_pair.loc[baseline]  # by pair; NaN where either lacks it
        for metric in MULTI_METRICS:
            differences = paired[metric.name].dropna().to_numpy()
            p_value, note = paired_wilcoxon(differences)
            records.append({"variant": variant, "baseline": baseline, "metric": metric.name,
                            "mean_diff": float(differences.mean()) if differences.size else math.nan,
                            "p_value": p_value, "test": "wilcoxon", "n_pairs": int(differences.size),
                            "significant": bool(p_value < alpha) if not math.isnan(p_value) else False,
                            "alpha": alpha, "note": note})
    return pd.DataFrame.from_records(records, columns=list(TESTS_COLUMNS))


def summary(stats: pd.DataFrame) -> dict:
    """{variant: {metric: mean}}: summary.json."""
    return {variant: dict(zip(rows.metric, rows["mean"])) for variant, rows in stats.groupby("variant", sort=True)}


def headline(means: dict) -> dict:
    """{"multi": {variant: {headline metrics}}} to 3 decimals: what `dvc exp show` lists of this study."""
    names = [CLIP_T.name, *(m.name for m in MULTI_METRICS if m.headline and m is not CLIP_T)]
    return {"multi": {variant: {name: round(values[name], 3) for name in names} for variant, values in means.items()}}


def write_multi_metrics(folder: Path, per_image: pd.DataFrame, per_prompt: pd.DataFrame, stats: pd.DataFrame,
                        tests: pd.DataFrame, retention: pd.DataFrame, encoders: dict) -> None:
    """results/multi/metrics/ appears whole (retention.csv: `retention_stats`)."""
    means = summary(stats)
    with atomic_dir(folder) as tmp:
        for name, table in (("per_image", per_image), ("per_prompt", per_prompt), ("stats", stats), ("tests", tests),
                            ("retention", retention)):
            table.to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / "summary.json", json_numbers(means))
        write_json(tmp / "headline.json", json_numbers(headline(means)))
        write_json(tmp / ENCODERS, encoders)
