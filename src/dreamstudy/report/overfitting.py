"""Figures of overfitting: diversity, prior preservation and memorized share per run, and the distribution of
each image's highest DINO similarity to a training image against the memorization threshold."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dreamstudy.report.load import LABELS, RUN_KEYS, Results
from dreamstudy.report.plotting import interval_bars, plt, sns

PANELS = {"div": "higher: more diverse", "pres": "lower: better prior preservation",
          "memorized": "share above the threshold"}


def overfitting_figure(results: Results) -> Figure:
    """A panel per metric of PANELS, bars with the CIs of stats.csv; on PRES, the base model's PRES as a black
    tick on each bar (what fine-tuning started from)."""
    with sns.axes_style("whitegrid"):
        figure, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS) + 1.2, 3.2), layout="constrained")
    for ax, (metric, meaning) in zip(axes, PANELS.items()):
        positions = interval_bars(ax, results.stats[results.stats["metric"] == metric], results.methods,
                                  results.strategies)
        ax.set(title=f"{LABELS[metric]}\n({meaning})", ylabel="")
        if metric == "pres":
            base_model_ticks(ax, results, positions)
    pres_panel = axes[list(PANELS).index("pres")]  # its legend has the strategies and the base model
    figure.legend(*pres_panel.get_legend_handles_labels(), loc="outside right center")
    figure.suptitle(results.caption("Diversity, prior preservation and memorization: mean and "
                                    f"{results.ci_label}; LPIPS: {results.encoders.lpips}", sep="\n"))
    return figure


def base_model_ticks(ax: Axes, results: Results, positions: dict) -> None:
    """The base model's PRES of each run's subjects (mean over those with class images) as a tick on its bar."""
    base = results.per_subject.groupby(RUN_KEYS)["pres_base"].mean().dropna()
    if not base.empty:
        ax.scatter([positions[run] for run in base.index], base, marker="_", s=300, color="black", zorder=3,
                   label="base model")


def memorization_figure(results: Results) -> Figure:
    """Histogram of mem_dino per strategy, a panel per method, the threshold as a red dashed line."""
    threshold = results.memorization_threshold
    scores = results.per_image
    low, high = min(scores["mem_dino"].min(), threshold), max(scores["mem_dino"].max(), threshold)
    low, high = min(low, high - 0.01), max(high, low + 0.01)  # never an empty range (all equal)
    with sns.axes_style("whitegrid"):
        grid = sns.displot(data=scores, x="mem_dino", hue="strategy", col="method", col_order=results.methods,
                           hue_order=results.strategies, element="step", stat="percent", common_norm=False,
                           binrange=(low, high), bins=30, height=3, aspect=1.2)
    for ax in grid.axes.flat:
        ax.axvline(threshold, color="red", linestyle="--")
        ax.set_xlabel(LABELS["mem_dino"])
    grid.set_titles("{col_name}")
    grid.figure.suptitle(results.caption(
        f"Memorization: highest DINO similarity of each image to a training image; dashed: threshold "
        f"{threshold:g} (above: memorized)", sep="\n"), y=1.0, va="bottom")
    return grid.figure
