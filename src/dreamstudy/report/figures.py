"""Figures of the study, each saved as PDF and PNG: scores per run, DINO against CLIP-T, scores by prompt kind
and live vs object, diversity / prior preservation / memorization (report.overfitting), sample grids.

Byte-identical on every run: no randomness (CIs come from stats.csv), no timestamp in the PDFs.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dreamstudy.metrics.registry import CLIP_T, DINO, Metric
from dreamstudy.report.load import LABELS, MAIN_METRICS, RUN_KEYS, Results, ResultsError
from dreamstudy.report.overfitting import memorization_figure, overfitting_figure
from dreamstudy.report.plotting import interval_bars, plt, save, sns
from dreamstudy.report.tables import ordered_metrics

__all__ = ["plt", "save", "sns", "write_figures"]  # plt, save, sns: also the ablation's figures

THUMBNAIL_PX = 256  # a grid cell is ~2 in wide: full-size samples would only bloat the PDFs
PROMPT_TITLE_WIDTH = 20  # characters per line of a prompt above its column
# A grid of 10 runs is shrunk ~0.4x to fit a page: these sizes print at ~6 pt there
GRID_FONT = {"title": 14, "label": 15}


def write_figures(results: Results, figures_dir: str | Path, photos: dict[str, list[Path]], *,
                  sample_prompts: int = 4) -> None:
    """Every figure into `figures_dir` (a temporary folder: see `write_report`), one at a time to bound memory;
    `photos`: each subject's training photos, for its sample grid."""
    builders = {
        "metrics": functools.partial(metrics_figure, results),
        "dino_vs_clip_t": functools.partial(dino_vs_clip_t_figure, results),
        "breakdown": functools.partial(breakdown_figure, results),
        "overfitting": functools.partial(overfitting_figure, results),
        "memorization": functools.partial(memorization_figure, results),
    } | {
        f"samples_{subject}": functools.partial(samples_figure, results, subject, photos.get(subject, []),
                                                sample_prompts)
        for subject in results.subjects
    }
    for name, build in builders.items():
        figure = build()
        save(figure, Path(figures_dir), name)
        plt.close(figure)


def metrics_figure(results: Results) -> Figure:
    """One panel per metric: bars = mean, error bars = the CI of stats.csv (as in the tables)."""
    with sns.axes_style("whitegrid"):
        figure, axes = plt.subplots(1, len(MAIN_METRICS), figsize=(3.4 * len(MAIN_METRICS) + 1.2, 3.2),
                                    layout="constrained")
    for ax, metric in zip(axes, MAIN_METRICS):
        interval_bars(ax, results.stats[results.stats["metric"] == metric.name], results.methods, results.strategies)
        ax.set(title=metric.label, ylabel="score")
    figure.legend(*axes[0].get_legend_handles_labels(), title="strategy", loc="outside right center")
    figure.suptitle(results.caption(f"DreamBench scores: mean and {results.ci_label} (hierarchical bootstrap "
                                    "over subjects and prompts)", sep="\n"))
    return figure


def dino_vs_clip_t_figure(results: Results) -> Figure:
    """Subject fidelity against prompt fidelity: one large point per run (mean), faint points per subject,
    the real images' DINO as the upper bound."""
    runs = results.per_subject.groupby(RUN_KEYS, sort=False)[[CLIP_T.name, DINO.name]].mean().reset_index()
    encoding = dict(x=CLIP_T.name, y=DINO.name, hue="strategy", hue_order=results.strategies,
                    style="method", style_order=results.methods)
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        sns.scatterplot(data=results.per_subject, **encoding, s=20, alpha=0.3, legend=False, ax=ax)
        sns.scatterplot(data=runs, **encoding, s=120, edgecolor="black", ax=ax)
    ax.axhline(results.real_images[DINO.name].mean(), color="gray", linestyle="--", label="real images")
    ax.legend()
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))  # outside: 30 subjects fill the axes
    ax.set(xlabel=axis_label(CLIP_T), ylabel=axis_label(DINO))
    figure.suptitle(results.caption(f"{DINO.label} against {CLIP_T.label}: mean per run, faint: per subject, "
                                    "dashed: real images", sep="\n"))
    return figure


def axis_label(metric: Metric) -> str:
    """'DINO (subject fidelity)'."""
    return f"{metric.label} ({metric.meaning})"


def breakdown_figure(results: Results) -> Figure:
    """breakdown.csv as bars: a row of panels per method, a panel per metric, x = prompt kind or live/object."""
    scores = results.breakdown.assign(metric=lambda t: t["metric"].map(lambda m: LABELS.get(m, m)))
    with sns.axes_style("whitegrid"):
        grid = sns.catplot(data=scores, kind="bar", x="group", y="value", hue="strategy", col="metric",
                           row="method", order=list(dict.fromkeys(scores["group"])), row_order=results.methods,
                           hue_order=results.strategies, errorbar=None, sharey=False, height=2.8, aspect=1.2,
                           col_order=[LABELS.get(m, m) for m in ordered_metrics(results.breakdown["metric"])])
    grid.set_titles("{row_name}: {col_name}")
    grid.set_axis_labels("", "mean over images")
    grid.tick_params(axis="x", rotation=30)
    grid.figure.suptitle(results.caption("Scores by prompt kind and by live vs object subjects", sep="\n"),
                         y=1.0, va="bottom")
    return grid.figure


def samples_figure(results: Results, subject: str, photos: list[Path], n_prompts: int) -> Figure:
    """As DreamBooth's figures: the subject's training photos in the first column, so that fidelity is judged at
    a glance, then the first `n_prompts` prompts (columns, image 0 of each) drawn by each (method, strategy)
    (rows, named on the right). More runs make the grid taller, not wider: it stays readable on a page."""
    samples = results.samples[(results.samples["subject"] == subject) & (results.samples["image_index"] == 0)]
    prompts = samples.drop_duplicates("prompt_index").sort_values("prompt_index").head(n_prompts)
    if prompts.empty:
        raise ResultsError(f"samples.jsonl of subject {subject!r}: no row with image_index 0")
    if not photos:
        raise ResultsError(f"subject {subject!r}: no training photo to show beside its samples")
    columns = list(prompts[["prompt_index", "prompt"]].itertuples(index=False))
    sampled = set(samples[RUN_KEYS].itertuples(index=False, name=None))
    runs = [run for run in results.runs if run in sampled]
    figure, axes = plt.subplots(len(runs), 1 + len(columns), squeeze=False, layout="constrained",
                                figsize=(2 * (1 + len(columns)) + 1.2, 2 * len(runs) + 1))
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    for row, (method, strategy) in enumerate(runs):
        if row < len(photos):
            axes[row, 0].imshow(thumbnail(photos[row]))
        else:  # fewer photos than runs: the rest of the column is left blank
            axes[row, 0].axis("off")
        for column, (prompt_index, _) in enumerate(columns, start=1):
            cell = samples[(samples["method"] == method) & (samples["strategy"] == strategy)
                           & (samples["prompt_index"] == prompt_index)]
            if not cell.empty:  # an unsampled prompt stays an empty frame
                axes[row, column].imshow(thumbnail(cell["path"].iloc[0]))
        axes[row, -1].yaxis.set_label_position("right")
        axes[row, -1].set_ylabel(f"{method}\n{strategy}", fontsize=GRID_FONT["label"])
    axes[0, 0].set_title("training\nphotos", fontsize=GRID_FONT["title"])
    for column, (_, prompt) in enumerate(columns, start=1):
        axes[0, column].set_title(textwrap.fill(prompt, PROMPT_TITLE_WIDTH), fontsize=GRID_FONT["title"])
    subject_class = results.per_subject.loc[results.per_subject["subject"] == subject, "class"].iloc[0]
    figure.suptitle(results.caption(f"Samples of {subject} ({subject_class}): its training photos, then image 0 "
                                    "per prompt (columns) of each method and strategy (rows)", sep="\n"),
                    fontsize=GRID_FONT["title"])
    return figure


def thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
        return np.asarray(image)
