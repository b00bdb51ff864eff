"""Uncertainty of a run's scores and tests between strategies.

DreamBench's variation comes from two levels: subjects (30) and, within each, prompts (25). The interval
(eval.confidence, 95%) therefore comes from a hierarchical bootstrap (eval.bootstrap_samples replicates) that
resamples subjects and, within each drawn subject, its prompts. Strategies are compared with the paired
Wilcoxon signed-rank test on per-subject differences (each subject is its own control: same prompts, same
seeds), significant below eval.alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dreamstudy.layout import BASELINE
from dreamstudy.metrics.registry import METRICS
from dreamstudy.seeding import derive_seed

# the metrics with an interval and a test: those that vary by prompt, and those of one value per subject
PROMPT_METRICS = tuple(m.name for m in METRICS if m.interval and m.level != "subject")
SUBJECT_METRICS = tuple(m.name for m in METRICS if m.interval and m.level == "subject")
# confidence and alpha: the settings that made the interval and `significant`, for the report to state
STATS_COLUMNS = ("method", "strategy", "metric", "mean", "ci_low", "ci_high", "confidence", "n_subjects")
TESTS_COLUMNS = ("method", "strategy", "baseline", "metric", "mean_diff", "p_value", "test", "n_subjects",
                 "significant", "alpha", "note")


def hierarchical_bootstrap(groups: Sequence[Sequence[float]], rng: np.random.Generator, n_boot: int,
                           confidence: float) -> tuple[float, float, float]:
    """(mean, low, high): the mean over groups of each group's mean, and its percentile interval from
    resampling groups and, within each drawn group, its values. NaN values are left out; groups without
    values are dropped; (nan, nan, nan) when none is left, and a NaN interval around a single value (one
    subject of a subject-level metric: nothing to resample, not an interval of width 0)."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    groups = [g[~np.isnan(g)] for g in groups]
    groups = [g for g in groups if g.size]
    if not groups:
        return math.nan, math.nan, math.nan
    sizes = np.array([g.size for g in groups])
    estimate = float(np.mean([g.mean() for g in groups]))
    if sizes.sum() == 1:
        return estimate, math.nan, math.nan
    padded = np.full((len(groups), sizes.max()), np.nan)
    for row, values in enumerate(groups):
        padded[row, :values.size] = values

    # All replicates at once: [B, S] drawn groups, [B, S, Pmax] drawn positions within each, of which the
    # first `size` count (a group of P values is resampled P times).
    drawn = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    drawn_sizes = sizes[drawn][..., None]
    positions = np.floor(rng.random((n_boot, len(groups), sizes.max())) * drawn_sizes).astype(int)
    valid = np.arange(sizes.max()) < drawn_sizes
    values = np.where(valid, padded[drawn[..., None], positions], 0.0)
    replicates = (values.sum(axis=2) / drawn_sizes[..., 0]).mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return estimate, float(low), float(high)


def bootstrap_table(per_prompt: pd.DataFrame, per_subject: pd.DataFrame, seed: int, n_boot: int,
                    confidence: float) -> pd.DataFrame:
    """stats.csv: mean and `confidence` interval of each metric per run (method, strategy), over subjects."""
    records = []
    for (method, strategy), prompts in per_prompt.groupby(["method", "strategy"], sort=True):
        subjects = per_subject[(per_subject.method == method) & (per_subject.strategy == strategy)]
        levels = {metric: [group[metric].to_numpy() for _, group in prompts.groupby("subject", sort=True)]
                  for metric in PROMPT_METRICS}
        # a subject-level metric is a group of one value per subject: only subjects are resampled
        levels.update({metric: [[value] for value in subjects.sort_values("subject")[metric]]
                       for metric in SUBJECT_METRICS})
        for metric, groups in levels.items():
            rng = np.random.default_rng(derive_seed(seed, "bootstrap", method, strategy, metric))
            mean, low, high = hierarchical_bootstrap(groups, rng, n_boot, confidence)
            n_subjects = sum(bool(np.any(~np.isnan(np.asarray(g, dtype=float)))) for g in groups)
            records.append({"method": method, "strategy": strategy, "metric": metric, "mean": mean,
                            "ci_low": low, "ci_high": high, "confidence": confidence,
                            "n_subjects": n_subjects})
    return pd.DataFrame.from_records(records, columns=list(STATS_COLUMNS))


def paired_wilcoxon(differences: Sequence[float]) -> tuple[float, str]:
    """(two-sided p value, note): NaN with a note where the test is undefined."""
    differences = np.asarray(differences, dtype=float)
    if differences.size < 2:
        return math.nan, f"n = {differences.size} < 2 paired subjects"
    if np.all(differences == 0):
        return math.nan, "all differences are 0"
    return float(stats.wilcoxon(differences).pvalue), ""


def wilcoxon_table(per_subject: pd.DataFrame, alpha: float, baseline: str = BASELINE) -> pd.DataFrame:
    """tests.csv: every strategy against `baseline` of the same method, on the subjects both have a value for;
    `significant` where p < `alpha` (uncorrected for the number of comparisons).

    Empty when `baseline` is not in the grid."""
    records = []
    for (method, strategy), runs in per_subject.groupby(["method", "strategy"], sort=True):
        base = per_subject[(per_subject.method == method) & (per_subject.strategy == baseline)]
        if strategy == baseline or base.empty:
            continue
        metrics = [*PROMPT_METRICS, *SUBJECT_METRICS]
        # subject -> strategy minus baseline; NaN where either lacks a value (or the subject)
        paired = (runs.set_index("subject")[metrics].astype(float)
                  - base.set_index("subject")[metrics].astype(float))
        for metric in metrics:
            differences = paired[metric].dropna().to_numpy()
            p_value, note = paired_wilcoxon(differences)
            records.append({"method": method, "strategy": strategy, "baseline": baseline, "metric": metric,
                            "mean_diff": float(differences.mean()) if differences.size else math.nan,
                            "p_value": p_value, "test": "wilcoxon", "n_subjects": int(differences.size),
                            "significant": bool(p_value < alpha), "alpha": alpha, "note": note})
    return pd.DataFrame.from_records(records, columns=list(TESTS_COLUMNS))
