"""The multi-concept study's tables from every run's scores (metrics/multi.py): per image, per prompt, each
variant's mean over pairs with a hierarchical bootstrap interval (pairs, then prompts within a pair), and paired
tests against joint training. No torch: the gather_multi stage loads no model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dreamstudy.io import atomic_dir, write_json
from dreamstudy.metrics.registry import CLIP_T, MULTI_IMAGE_METRICS, MULTI_METRICS
from dreamstudy.metrics.scores import ENCODERS
from dreamstudy.metrics.statistics import hierarchical_bootstrap, paired_wilcoxon
from dreamstudy.metrics.study import json_numbers
from dreamstudy.seeding import derive_seed

RUN_KEYS = ("variant", "pair")  # a run of the multi-concept study: its sample label ("lora_sum@regions") and pair
PROMPT_KEYS = (*RUN_KEYS, "prompt_index")
PAIR_IMAGE_KEYS = (*PROMPT_KEYS, "prompt_kind", "prompt", "image_index", "seed", "file", "model")
PER_SUBJECT = ("dino_1", "dino_2", "clip_i_1", "clip_i_2")  # by the subject's place in the pair
STATS_COLUMNS = ("variant", "metric", "mean", "ci_low", "ci_high", "confidence", "n_pairs")
TESTS_COLUMNS = ("variant", "baseline", "metric", "mean_diff", "p_value", "test", "n_pairs", "significant", "alpha",
                 "note")
IMAGES, DIVERSITY = "images.csv", "div.csv"  # a run's score files


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
                        tests: pd.DataFrame, encoders: dict) -> None:
    """results/multi/metrics/ appears whole."""
    means = summary(stats)
    with atomic_dir(folder) as tmp:
        for name, table in (("per_image", per_image), ("per_prompt", per_prompt), ("stats", stats), ("tests", tests)):
            table.to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / "summary.json", json_numbers(means))
        write_json(tmp / "headline.json", json_numbers(headline(means)))
        write_json(tmp / ENCODERS, encoders)
