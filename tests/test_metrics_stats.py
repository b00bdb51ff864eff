"""Statistics: the hierarchical bootstrap covers a known mean, the Wilcoxon test finds a clear shift, and the
stats.csv / tests.csv tables follow the schema."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dreamstudy.metrics.statistics import (
    PROMPT_METRICS,
    STATS_COLUMNS,
    TESTS_COLUMNS,
    bootstrap_table,
    hierarchical_bootstrap,
    paired_wilcoxon,
    wilcoxon_table,
)
from dreamstudy.metrics.study import headline

N_BOOT, CONFIDENCE, ALPHA = 2000, 0.95, 0.05  # params.yaml's eval.bootstrap_samples, confidence, alpha


def simulated_study(rng, true_mean=0.5, subjects=20, prompts=25):
    """Subjects vary around the true mean, prompts around their subject (DreamBench's two levels)."""
    return [rng.normal(effect, 0.1, prompts) for effect in true_mean + rng.normal(0, 0.1, subjects)]


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    covered = []
    for study in range(200):
        mean, low, high = hierarchical_bootstrap(simulated_study(rng), np.random.default_rng(study), 1000, CONFIDENCE)
        covered.append(low <= 0.5 <= high)
        assert low <= mean <= high
    assert 0.88 <= np.mean(covered) <= 0.99


def test_bootstrap_known_answers():
    rng = np.random.default_rng(0)

    def bootstrap(groups):
        return hierarchical_bootstrap(groups, rng, N_BOOT, CONFIDENCE)

    assert bootstrap([[0.3, 0.3], [0.3]]) == pytest.approx((0.3, 0.3, 0.3))  # no spread
    # the mean of subject means, not of all values; NaNs and empty subjects left out
    mean, _, _ = bootstrap([[0.0, 0.0, 0.0, np.nan], [1.0], []])
    assert mean == pytest.approx(0.5)
    assert all(math.isnan(v) for v in bootstrap([[np.nan], []]))
    mean, low, high = bootstrap([[0.7], [np.nan]])  # one value: no interval
    assert mean == pytest.approx(0.7) and math.isnan(low) and math.isnan(high)
    # resampling prompts matters even with one subject
    _, low, high = bootstrap([[0.0, 1.0] * 10])
    assert low < 0.5 < high


def test_confidence_sets_the_coverage_of_the_same_replicates():
    study = simulated_study(np.random.default_rng(2))
    _, low95, high95 = hierarchical_bootstrap(study, np.random.default_rng(3), N_BOOT, 0.95)
    mean, low50, high50 = hierarchical_bootstrap(study, np.random.default_rng(3), N_BOOT, 0.5)
    assert low95 < low50 < mean < high50 < high95


def test_bootstrap_is_deterministic_from_its_generator():
    study = simulated_study(np.random.default_rng(1))
    first = hierarchical_bootstrap(study, np.random.default_rng(7), N_BOOT, CONFIDENCE)
    assert hierarchical_bootstrap(study, np.random.default_rng(7), N_BOOT, CONFIDENCE) == first
    assert hierarchical_bootstrap(study, np.random.default_rng(8), N_BOOT, CONFIDENCE) != first


def test_wilcoxon_on_a_clear_shift_is_significant():
    rng = np.random.default_rng(0)
    p_value, note = paired_wilcoxon(0.1 + rng.normal(0, 0.02, 12))
    assert p_value < 0.01 and note == ""
    p_value, _ = paired_wilcoxon(rng.normal(0, 0.02, 12))
    assert p_value > 0.05
    assert math.isnan(paired_wilcoxon([0.0, 0.0, 0.0])[0]) and "0" in paired_wilcoxon([0.0, 0.0])[1]
    assert math.isnan(paired_wilcoxon([0.2])[0]) and "< 2" in paired_wilcoxon([0.2])[1]


def tables(shift=0.1, subjects=10, prompts=3):
    """per_prompt and per_subject of lora x {none, classic}: classic scores `shift` higher on every metric."""
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(subjects)]
    base = {subject: rng.uniform(0.2, 0.6, prompts) for subject in names}
    rows = [{"method": "lora", "strategy": strategy, "subject": subject, "prompt_index": k,
             **{metric: value + (shift if strategy == "classic" else 0) + 0.01 * index
                for index, metric in enumerate(PROMPT_METRICS)}}
            for strategy in ("none", "classic") for subject in names for k, value in enumerate(base[subject])]
    per_prompt = pd.DataFrame(rows)
    per_subject = per_prompt.groupby(["method", "strategy", "subject"])[list(PROMPT_METRICS)].mean().reset_index()
    per_subject["pres"] = [np.nan if subject == "s0" else 0.5 for subject in per_subject.subject]
    per_subject.loc[per_subject.strategy == "classic", "pres"] += 0.01 * np.arange(subjects)
    return per_prompt, per_subject


def test_tests_table_compares_every_strategy_with_none():
    _, per_subject = tables()
    table = wilcoxon_table(per_subject, ALPHA)
    assert list(table.columns) == list(TESTS_COLUMNS)
    tests = table.set_index("metric")
    assert set(tests.strategy) == {"classic"} and set(tests.baseline) == {"none"} and set(tests.test) == {"wilcoxon"}
    assert tests.loc["dino", "mean_diff"] == pytest.approx(0.1) and tests.loc["dino", "significant"]
    assert tests.loc["dino", "n_subjects"] == 10
    assert tests.loc["pres", "n_subjects"] == 9  # s0 has no PRES images
    # no baseline in the grid: no tests
    assert wilcoxon_table(per_subject[per_subject.strategy == "classic"], ALPHA).empty
    # only the subjects both strategies have are paired
    uneven = per_subject[~((per_subject.strategy == "none") & (per_subject.subject == "s9"))]
    assert wilcoxon_table(uneven, ALPHA).set_index("metric").loc["dino", "n_subjects"] == 9


def test_alpha_decides_significance():
    _, per_subject = tables()
    strict = wilcoxon_table(per_subject, alpha=1e-6).set_index("metric")
    assert strict.loc["dino", "p_value"] < ALPHA and not strict.loc["dino", "significant"]
    assert wilcoxon_table(per_subject, ALPHA).set_index("metric").loc["dino", "significant"]


def test_tables_record_the_confidence_and_alpha_that_made_them():
    """The report states these levels: it reads them from stats.csv and tests.csv, not from params."""
    per_prompt, per_subject = tables()
    stats = bootstrap_table(per_prompt, per_subject, 0, 100, confidence=0.9)
    tests = wilcoxon_table(per_subject, alpha=0.01)
    assert not stats.empty and (stats["confidence"] == 0.9).all()
    assert not tests.empty and (tests["alpha"] == 0.01).all()


def test_stats_table_seeded_from_params():
    per_prompt, per_subject = tables()
    stats = bootstrap_table(per_prompt, per_subject, 0, 500, CONFIDENCE)
    assert list(stats.columns) == list(STATS_COLUMNS)
    assert set(stats.metric) == {*PROMPT_METRICS, "pres"} and len(stats) == 2 * 6
    assert stats.equals(bootstrap_table(per_prompt, per_subject, 0, 500, CONFIDENCE))
    assert not stats.equals(bootstrap_table(per_prompt, per_subject, 1, 500, CONFIDENCE))
    row = stats.set_index(["strategy", "metric"])
    expected = per_subject[per_subject.strategy == "none"]["dino"].mean()
    assert row.loc[("none", "dino"), "mean"] == pytest.approx(expected)
    assert row.loc[("none", "dino"), "ci_low"] < expected < row.loc[("none", "dino"), "ci_high"]
    assert row.loc[("none", "pres"), "n_subjects"] == 9 and row.loc[("none", "dino"), "n_subjects"] == 10


def test_the_headline_names_the_ablation_apart_from_the_main_study():
    """`dvc exp show` tells main and ablation columns apart by name alone (no file prefix)."""
    summary = {"lora": {"none": {"dino": 0.12345, "clip_t": 0.2, "clip_i": 0.5}}}
    assert headline(summary) == {"lora": {"none": {"dino": 0.123, "clip_t": 0.2}}}
    assert headline(summary, "ablation") == {"ablation": {"none": {"dino": 0.123, "clip_t": 0.2}}}
