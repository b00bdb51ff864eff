"""Figures of the study, each saved as PDF and PNG: scores per run, DINO against CLIP-T, sample grids.

Byte-identical on every run: fixed bootstrap seed, no timestamp in the PDFs.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dreamstudy.report.load import METRICS, RUN_KEYS, Results, ResultsError

matplotlib.use("Agg")  # the stage runs headless under DVC; pyplot (also seaborn's) must come after this
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

PNG_DPI = 150
THUMBNAIL_PX = 256  # a grid cell is ~2 in wide: full-size samples would only bloat the PDFs
PROMPT_TITLE_WIDTH = 26  # characters per line of a prompt above its column


def write_figures(results: Results, figures_dir: str | Path, *, seed: int, sample_prompts: int = 4) -> None:
    """Every figure into `figures_dir` (a temporary folder: see `write_report`), one at a time to bound memory."""
    builders = {
        "metrics": functools.partial(metrics_figure, results, seed=seed),
        "dino_vs_clip_t": functools.partial(dino_vs_clip_t_figure, results),
    } | {
        f"samples_{subject}": functools.partial(samples_figure, results, subject, sample_prompts)
        for subject in results.subjects
    }
    for name, build in builders.items():
        figure = build()
        save(figure, Path(figures_dir), name)
        plt.close(figure)


def save(figure: Figure, folder: Path, name: str) -> None:
    figure.savefig(folder / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    figure.savefig(folder / f"{name}.png", bbox_inches="tight", dpi=PNG_DPI)


def metrics_figure(results: Results, *, seed: int) -> Figure:
    """One panel per metric: bars = mean over subjects, error bars = 95% bootstrap CI over subjects."""
    scores = results.per_subject.melt(id_vars=[*RUN_KEYS, "subject"], value_vars=list(METRICS),
                                      var_name="metric", value_name="score")
    scores["metric"] = scores["metric"].map(METRICS)
    with sns.axes_style("whitegrid"):
        grid = sns.catplot(data=scores, kind="bar", x="method", y="score", hue="strategy", col="metric",
                           order=results.methods, hue_order=results.strategies,
                           col_order=list(METRICS.values()), errorbar=("ci", 95), seed=seed,
                           sharey=False, height=3, aspect=0.8)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(results.caption(
        "DreamBench scores per method and strategy: mean over subjects, 95% CI over subjects", sep="\n"),
        y=1.0, va="bottom")  # above the panel titles; savefig's tight bounding box keeps it in
    return grid.figure


def dino_vs_clip_t_figure(results: Results) -> Figure:
    """Subject fidelity against prompt fidelity: one large point per run (mean), faint points per subject."""
    runs = results.per_subject.groupby(RUN_KEYS, sort=False)[list(METRICS)].mean().reset_index()
    encoding = dict(x="clip_t", y="dino", hue="strategy", hue_order=results.strategies,
                    style="method", style_order=results.methods)
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        sns.scatterplot(data=results.per_subject, **encoding, s=20, alpha=0.3, legend=False, ax=ax)
        sns.scatterplot(data=runs, **encoding, s=120, edgecolor="black", ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))  # outside: 30 subjects fill the axes
    ax.set(xlabel="CLIP-T (prompt fidelity)", ylabel="DINO (subject fidelity)")
    figure.suptitle(results.caption("DINO against CLIP-T: mean per run, faint: per subject", sep="\n"))
    return figure


def samples_figure(results: Results, subject: str, n_prompts: int) -> Figure:
    """Rows = (method, strategy), columns = the subject's first `n_prompts` prompts, image 0 of each."""
    samples = results.samples[(results.samples["subject"] == subject) & (results.samples["image_index"] == 0)]
    prompts = samples.drop_duplicates("prompt_index").sort_values("prompt_index").head(n_prompts)
    if prompts.empty:
        raise ResultsError(f"samples.jsonl of subject {subject!r}: no row with image_index 0")
    columns = list(prompts[["prompt_index", "prompt"]].itertuples(index=False))
    runs = results.per_subject.loc[results.per_subject["subject"] == subject, RUN_KEYS]
    figure, axes = plt.subplots(len(runs), len(columns), squeeze=False, layout="constrained",
                                figsize=(2 * len(columns) + 0.4, 2.2 * len(runs) + 0.6))
    for row, (method, strategy) in enumerate(runs.itertuples(index=False)):
        for column, (prompt_index, prompt) in enumerate(columns):
            ax = axes[row, column]
            ax.set(xticks=[], yticks=[])
            cell = samples[(samples["method"] == method) & (samples["strategy"] == strategy)
                           & (samples["prompt_index"] == prompt_index)]
            if not cell.empty:  # an unsampled prompt stays an empty frame
                ax.imshow(thumbnail(cell["path"].iloc[0]))
            if row == 0:
                ax.set_title(textwrap.fill(prompt, PROMPT_TITLE_WIDTH), fontsize=8)
            if column == 0:
                ax.set_ylabel(f"{method}\n{strategy}")
    subject_class = results.per_subject.loc[results.per_subject["subject"] == subject, "class"].iloc[0]
    figure.suptitle(results.caption(f"Samples of {subject} ({subject_class}): image 0 per prompt", sep="\n"))
    return figure


def thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
        return np.asarray(image)
