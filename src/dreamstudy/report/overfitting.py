"""Figures of overfitting: diversity, prior preservation and memorized share per run, and the distribution of
each image's highest DINO similarity to a training image against the memorization threshold."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dreamstudy.metrics.registry import MEM_DINO, PRES, PRES_BASE
from dreamstudy.report.load import OVERFITTING_METRICS, RUN_KEYS, Results
from dreamstudy.report.plotting import interval_bars, plt, sns

PANELS = [m for m in OVERFITTING_METRICS if m.interval]  # PRES (base) is drawn on PRES's panel


def overfitting_figure(results: Results) -> Figure:
    """A panel per metric of PANELS, bars with the CIs of stats.csv; on PRES, the base model's PRES as a black
    tick on each bar (what fine-tuning started from)."""
    with sns.axes_style("whitegrid"):
        figure, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS) + 1.2, 3.2), layout="constrained")
    for ax, metric in zip(axes, PANELS):
        positions = interval_bars(ax, results.stats[results.stats["metric"] == metric.name], results.methods,
                                  results.strategies)
        ax.set(title=f"{metric.label}\n({metric.meaning})", ylabel="")
        if metric == PRES:
            base_model_ticks(ax, results, positions)
    pres_panel = axes[PANELS.index(PRES)]  # its legend has the strategies and the base model
    figure.legend(*pres_panel.get_legend_handles_labels(), loc="outside right center")
    figure.suptitle(results.caption("Diversity, prior preservation and memorization: mean and "
                                    f"{results.ci_label}; LPIPS: {results.encoders.lpips}", sep="\n"))
    return figure


def base_model_ticks(ax: Axes, results: Results, positions: dict) -> None:
    """The base model's PRES of each run's subjects (mean over those with class images) as a tick on its bar."""
    base = results.per_subject.groupby(RUN_KEYS)[PRES_BASE.name].mean().dropna()
    if not base.empty:
        ax.scatter([positions[run] for run in base.index], base, marker="_", s=300, color="black", zorder=3,
                   label="base model")


def memorization_figure(results: Results) -> Figure:
    """Histogram of mem_dino per strategy, a panel per method, the threshold as a red dashed line."""
    threshold = results.memorization_threshold
    scores = results.per_image
    low, high = min(scores[MEM_DINO.name].min(), threshold), max(scores[MEM_DINO.name].max(), threshold)
    low, high = min(low, high - 0.01), max(high, low + 0.01)  # never an empty range (all equal)
    with sns.axes_style("whitegrid"):
        grid = sns.displot(data=scores, x=MEM_DINO.name, hue="strategy", col="method", col_order=results.methods,
                           hue_order=results.strategies, element="step", stat="percent", common_norm=False,
                           binrange=(low, high), bins=30, height=3, aspect=1.2)
    for ax in grid.axes.flat:
        ax.axvline(threshold, color="red", linestyle="--")
        ax.set_xlabel(MEM_DINO.label)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(results.caption(
        f"Memorization: highest DINO similarity of each image to a training image; dashed: threshold "
        f"{threshold:g} (above: memorized)", sep="\n"), y=1.0, va="bottom")
    return grid.figure
