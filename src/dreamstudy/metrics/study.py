"""The gather stage: the score folders of a study's grid runs (metrics.scores, one per run from the evaluate
stage) -> its metrics folder, results/metrics/ (the schema the report reads, see write_metrics), with the
memorization threshold, bootstrap intervals and tests against `none` applied here. Pandas only, no model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dreamstudy.io import atomic_dir, write_json
from dreamstudy.layout import Layout, parse_strategy_label
from dreamstudy.metrics.registry import METRICS
from dreamstudy.metrics.scores import ENCODERS, Run, RunScores, read_scores
from dreamstudy.metrics.statistics import bootstrap_table, wilcoxon_table
from dreamstudy.metrics.tables import REAL_IMAGE_SCORES, aggregate, breakdown, with_memorized

TABLES = ("per_image", "per_prompt", "per_subject", "real_images", "breakdown", "stats", "tests")
HEADLINE = tuple(m.name for m in METRICS if m.headline)  # headline.json: `dvc exp show`'s columns


@dataclass
class StudyMetrics:
    per_image: pd.DataFrame
    per_prompt: pd.DataFrame
    per_subject: pd.DataFrame
    real_images: pd.DataFrame
    breakdown: pd.DataFrame
    stats: pd.DataFrame
    tests: pd.DataFrame
    summary: dict
    headline: dict
    encoders: dict


def read_study_scores(layout: Layout, runs: list[Run]) -> list[RunScores]:
    """The score folders of `runs`, each checked, all from the same encoders."""
    folders = [layout.scores(*run) for run in runs]
    absent = [f"{folder} (written by `{evaluate_command(layout.study, run)}`)"
              for folder, run in zip(folders, runs) if not folder.is_dir()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} of the {len(runs)} runs have no score folder: "
                                + "; ".join(absent[:3]) + ("; ..." if len(absent) > 3 else ""))
    scores = [read_scores(folder, run) for folder, run in zip(folders, runs)]
    for folder, run_scores in zip(folders, scores):
        if run_scores.encoders != scores[0].encoders:
            raise ValueError(f"{folder / ENCODERS}: {run_scores.encoders} differs from {folders[0] / ENCODERS}: "
                             f"{scores[0].encoders}; a study's runs must be scored by the same encoders "
                             "(eval.pretrained_encoders): evaluate them again")
    return scores


def evaluate_command(study: str, run: Run) -> str:
    """The evaluate stage's command line that writes `run`'s score folder."""
    method, label, subject = run
    strategy, strength = parse_strategy_label(label)
    return " ".join(["python stages/evaluate.py", *(["--study", study] if study != "main" else []),
                     "--subject", subject, "--method", method, "--strategy", strategy,
                     *(["--strength", str(strength)] if strength is not None else [])])


def gather(scores: list[RunScores], *, seed: int, memorization_threshold: float, bootstrap_samples: int,
           confidence: float, alpha: float, study: str = "main") -> StudyMetrics:
    """The study's tables from its runs' scores (in grid order: per_image.csv keeps it)."""
    per_image = with_memorized(pd.concat([run.per_image for run in scores], ignore_index=True),
                               memorization_threshold)
    per_prompt, per_subject, summary = aggregate(per_image, pd.concat([run.div for run in scores], ignore_index=True),
                                                 pd.concat([run.pres for run in scores], ignore_index=True))
    # Every run of a subject scores the same photos with the same encoders: its first run's row stands for all.
    real = (pd.concat([run.real_images for run in scores], ignore_index=True)
            .drop_duplicates("subject").sort_values("subject", ignore_index=True))
    return StudyMetrics(per_image=per_image, per_prompt=per_prompt, per_subject=per_subject, real_images=real,
                        breakdown=breakdown(per_image),
                        stats=bootstrap_table(per_prompt, per_subject, seed, bootstrap_samples, confidence),
                        tests=wilcoxon_table(per_subject, alpha),
                        summary={**summary, "real_images": {score: float(real[score].mean())
                                                            for score in REAL_IMAGE_SCORES}},
                        headline=headline(summary, study), encoders=scores[0].encoders)


def headline(summary: dict, study: str = "main") -> dict:
    """{method: {strategy: {HEADLINE's metrics}}} to 3 decimals, from aggregate's run summary: few and narrow
    enough for `dvc exp show` (summary.json has every score). The ablation's one method is named `ablation`,
    so that `dvc exp show` tells its columns from the main study's without file names."""
    return {study if study != "main" else method: {strategy: {score: round(scores[score], 3) for score in HEADLINE}
                                                   for strategy, scores in strategies.items()}
            for method, strategies in summary.items()}


def json_numbers(value):
    """NaN and infinities -> None, recursively: summary.json stays valid JSON for DVC."""
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(out_dir: str | Path, metrics: StudyMetrics) -> None:
    """results/metrics/ appears whole: the CSVs of TABLES, summary.json and headline.json (DVC metrics) and
    encoders.json."""
    with atomic_dir(out_dir) as tmp:
        for name in TABLES:
            getattr(metrics, name).to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / "summary.json", json_numbers(metrics.summary))
        write_json(tmp / "headline.json", json_numbers(metrics.headline))
        write_json(tmp / ENCODERS, metrics.encoders)
