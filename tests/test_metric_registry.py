"""The metric registry: its entries are consistent, every metric column that evaluate writes and gather and the
statistics aggregate is one of its entries (and every entry is there), the report's tables and figures take
their columns and labels from it, and a new entry reaches the statistics and the summary without other edits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.layout import Layout
from dreamstudy.metrics import evaluate, run, study
from dreamstudy.metrics.registry import LEVELS, MEMORIZED, METRICS
from dreamstudy.report.ablation import table_latex
from dreamstudy.report.figures import metrics_figure
from dreamstudy.report.overfitting import overfitting_figure
from dreamstudy.report.plotting import plt
from dreamstudy.report.published import load_published
from dreamstudy.report.tables import main_table, overfitting_table
from tests.test_metrics import RUNS, make_study_tree
from tests.test_report import load, make_results

REPO = Path(__file__).resolve().parents[1]
# the columns of the score files and the study's tables that are not metrics
NOT_METRICS = {"subject", "class", "method", "strategy", "prompt_index", "prompt_kind", "prompt", "image_index",
               "seed", "file", "live", "n_images", "n_pres"}


def names(where=lambda metric: True) -> set[str]:
    return {metric.name for metric in METRICS if where(metric)}


def metric_columns(table: pd.DataFrame) -> set[str]:
    return set(table.columns) - NOT_METRICS


def test_entries_are_consistent():
    assert len(names()) == len(METRICS) and len({m.label for m in METRICS}) == len(METRICS)
    for metric in METRICS:
        assert metric.level in LEVELS and metric.direction in (+1, -1), metric
        assert metric.table in (None, "main", "overfitting"), metric
        assert not metric.interval or metric.table, f"{metric.name}: a CI that no table shows"
        # "higher: more diverse" / "lower: better prior preservation" say which way is better
        assert not metric.meaning.startswith(("higher", "lower")) or \
            metric.meaning.startswith("higher" if metric.direction > 0 else "lower"), metric


def test_published_metrics_are_the_number_columns_of_published_csv():
    table = load_published()
    text = {"method", "variant", "paper", "table", "subjects", "bibkey"}
    assert set(table.columns) - text == names(lambda m: m.published)


class RandomEncoders:
    """Random unit embeddings in place of CLIP and DINO: what is under test is which columns are written."""

    lpips = None  # prompt_diversity's LPIPS is replaced in the test

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def _random(self, count: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.rand(count, 8, generator=self.generator), dim=1)

    def cache_key(self, which: str) -> str:
        return f"random-{which}"

    def embed_images(self, which: str, images, batch_size: int = 32) -> torch.Tensor:
        return self._random(len(images))

    def embed_images_clip(self, images, batch_size: int = 32) -> torch.Tensor:
        return self._random(len(images))

    embed_images_dino = embed_images_clip

    def embed_texts(self, texts, batch_size: int = 32) -> torch.Tensor:
        return self._random(len(texts))

    def describe(self) -> dict:
        return {"pretrained": False, "clip": "random", "dino": "random", "lpips": "random"}


def test_evaluate_and_gather_write_every_registry_metric_and_no_other(tmp_path, monkeypatch):
    make_study_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, "mean_pairwise_lpips", lambda lpips, images, where: 0.5)
    layout, encoders = Layout(), RandomEncoders()
    scores = [run.evaluate_run("data/dreambench", layout.samples(*cell), layout.class_priors(cell[2]), cell,
                               pretrained=False, batch_size=8, seed=0, cache_root="cache", encoders=encoders)
              for cell in RUNS]
    for run_scores in scores:
        assert metric_columns(run_scores.per_image) == names(lambda m: m.level == "image") - {MEMORIZED.name}
        assert metric_columns(run_scores.div) == names(lambda m: m.level == "prompt")
        assert metric_columns(run_scores.pres) == names(lambda m: m.level == "subject")
        assert metric_columns(run_scores.real_images) == names(lambda m: m.real_images)
        # computed, not columns left empty: an image always has its scores
        assert run_scores.per_image[list(metric_columns(run_scores.per_image))].notna().all().all()
    assert scores[0].real_images[list(names(lambda m: m.real_images))].notna().all().all()  # the dog's 2 photos

    metrics = study.gather(scores, seed=0, memorization_threshold=0.9, bootstrap_samples=50, confidence=0.95,
                           alpha=0.05)
    assert metric_columns(metrics.per_image) == names(lambda m: m.level == "image")
    assert metric_columns(metrics.per_prompt) == names(lambda m: m.level != "subject")
    assert metric_columns(metrics.per_subject) == names()
    assert set(metrics.stats["metric"]) == set(metrics.tests["metric"]) == names(lambda m: m.interval)
    assert set(metrics.breakdown["metric"]) == names(lambda m: m.table and m.level == "image")
    for strategy in ("none", "classic"):
        assert set(metrics.summary["lora"][strategy]) == names(lambda m: m.table) | {"n_images"}
        assert set(metrics.headline["lora"][strategy]) == names(lambda m: m.headline)
    assert set(metrics.summary["real_images"]) == names(lambda m: m.real_images)


def header(tex: str) -> list[str]:
    """The column titles of a booktabs table: the line after \\toprule."""
    lines = tex.splitlines()
    return lines[lines.index(r"\toprule") + 1].removesuffix(r" \\").split(" & ")


def test_report_columns_and_labels_come_from_the_registry(tmp_path):
    results = load(make_results(tmp_path / "results", pretrained=True))
    main = [m.label for m in METRICS if m.table == "main"]
    assert header(main_table(results)) == ["Method", "Strategy", *main, "n"]
    assert header(overfitting_table(results)) == ["Method", "Strategy",
                                                  *(m.label for m in METRICS if m.table == "overfitting")]
    assert [ax.get_title() for ax in metrics_figure(results).axes] == main
    assert [ax.get_title().split("\n")[0] for ax in overfitting_figure(results).axes] == [
        m.label for m in METRICS if m.table == "overfitting" and m.interval]
    assert header(table_latex(results))[2:] == [m.label for m in METRICS if m.interval]
    plt.close("all")


NEW_METRIC = textwrap.dedent('''
    """Gather a hand-made study after adding one image metric to the registry and nothing else."""
    import json

    import numpy as np
    import pandas as pd

    from dreamstudy.metrics import registry

    registry.METRICS += (registry.Metric("sharpness", "image", "Sharpness", +1, table="main", interval=True,
                                         headline=True),)
    from dreamstudy.metrics import statistics, study, tables  # after the change: their lists come from METRICS

    rng = np.random.default_rng(0)
    rows = [{"method": "lora", "strategy": strategy, "subject": subject, "class": "dog", "live": True,
             "prompt_index": prompt, "prompt_kind": "property", "prompt": f"p{prompt}", "image_index": image,
             "seed": 0, "file": "x.png", **{name: rng.random() for name in tables.BY_LEVEL["image"]}}
            for strategy in ("none", "classic") for subject in ("dog", "dog2") for prompt in range(2)
            for image in range(2)]
    per_image = tables.with_memorized(pd.DataFrame(rows)[list(tables.IMAGE_SCORE_COLUMNS)], 0.9)
    per_prompt, per_subject, summary = tables.aggregate(per_image)
    print(json.dumps({
        "per_image": list(per_image.columns),
        "per_subject": list(per_subject.columns),
        "stats": list(statistics.bootstrap_table(per_prompt, per_subject, 0, 20, 0.95)["metric"]),
        "tests": list(statistics.wilcoxon_table(per_subject, 0.05)["metric"]),
        "breakdown": list(tables.breakdown(per_image)["metric"]),
        "summary": summary["lora"]["none"],
        "headline": study.headline(summary)["lora"]["none"],
    }))
''')


def test_a_new_registry_entry_reaches_the_tables_statistics_and_summary():
    """In a fresh interpreter: the other modules build their lists from the registry when first imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", NEW_METRIC], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["per_image"].index("sharpness") < out["per_image"].index("live")  # DreamBench's columns
    for listing in ("per_subject", "stats", "tests", "breakdown", "headline"):
        assert "sharpness" in out[listing], listing
    assert 0 < out["summary"]["sharpness"] < 1  # the mean of its values
