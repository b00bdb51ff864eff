"""The ablation's report: every (strategy, strength) of one method against its baseline, `none` (the original
images), on the DreamBench scores and the overfitting measures.

- strength.{pdf,png}: each metric against strength, a line per strategy with its CI band, `none` as a
  dashed line with its band;
- plane.{pdf,png}: DINO against CLIP-T, a point per (strategy, strength), `none` as a star;
- ablation.tex: every metric's mean and CI per row, * where it differs significantly from `none`.

Means, intervals and tests are stats.csv's and tests.csv's, as in the main report.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from dreamstudy.io import atomic_dir
from dreamstudy.layout import BASELINE, parse_strategy_label
from dreamstudy.metrics.registry import CLIP_T, DINO
from dreamstudy.report.figures import axis_label, plt, save, sns
from dreamstudy.report.latex import MISSING, Block, booktabs, escape_latex
from dreamstudy.report.load import INTERVAL_METRICS, Results
from dreamstudy.report.paper import study_numbers, write_numbers
from dreamstudy.report.tables import ci_note, definitions_note, run_rows, significance_note

BASELINE_LABEL = f"{BASELINE} (original images)"


def graded_stats(results: Results) -> pd.DataFrame:
    """stats.csv with each strategy label ("classic@0.5") split into strategy and strength (NaN: `none`)."""
    parsed = results.stats["strategy"].map(parse_strategy_label)
    return results.stats.assign(strategy=parsed.str[0], strength=parsed.str[1].astype(float))


def strength_figure(results: Results) -> Figure:
    """One panel per metric: mean against strength per strategy, CI band; `none` dashed across."""
    stats = graded_stats(results)
    strategies = [strategy for strategy in dict.fromkeys(stats["strategy"]) if strategy != BASELINE]
    colors = dict(zip(strategies, sns.color_palette(n_colors=len(strategies))))
    with sns.axes_style("whitegrid"):
        figure, axes = plt.subplots(1, len(INTERVAL_METRICS), figsize=(2.4 * len(INTERVAL_METRICS), 2.8),
                                    layout="constrained", squeeze=False)
    for ax, metric in zip(axes[0], INTERVAL_METRICS):
        rows = stats[stats["metric"] == metric.name]
        for _, base in rows[rows["strategy"] == BASELINE].iterrows():
            ax.axhline(base["mean"], color="black", linestyle="--", linewidth=1, label=BASELINE_LABEL)
            if not (math.isnan(base["ci_low"]) or math.isnan(base["ci_high"])):
                ax.axhspan(base["ci_low"], base["ci_high"], color="black", alpha=0.08, linewidth=0)
        for strategy in strategies:
            line = rows[rows["strategy"] == strategy].sort_values("strength")
            ax.plot(line["strength"], line["mean"], marker="o", color=colors[strategy], label=strategy)
            ax.fill_between(line["strength"], line["ci_low"], line["ci_high"], color=colors[strategy], alpha=0.15,
                            linewidth=0)
        ax.set(title=metric.label, xlabel="strength", xticks=sorted(stats["strength"].dropna().unique()))
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper")
    figure.suptitle(results.caption(f"Ablation ({results.methods[0]}): scores against augmentation strength "
                                    f"(mean over subjects, {results.ci_label})", sep="\n"))
    return figure


def plane_figure(results: Results) -> Figure:
    """DINO against CLIP-T, one point per (strategy, strength), sized by strength; `none` a black star."""
    stats = graded_stats(results)
    means = (stats[stats["metric"].isin([DINO.name, CLIP_T.name])]
             .pivot_table(index=["strategy", "strength"], columns="metric", values="mean", dropna=False)
             .reset_index())
    graded = means[means["strategy"] != BASELINE]
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        sns.scatterplot(data=graded, x=CLIP_T.name, y=DINO.name, hue="strategy", size="strength", sizes=(30, 200),
                        edgecolor="black", ax=ax)
    base = means[means["strategy"] == BASELINE]
    ax.scatter(base[CLIP_T.name], base[DINO.name], marker="*", s=250, color="black", label=BASELINE_LABEL)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    ax.set(xlabel=axis_label(CLIP_T), ylabel=axis_label(DINO))
    figure.suptitle(results.caption(f"Ablation ({results.methods[0]}): {DINO.label} against {CLIP_T.label} per "
                                    "strategy and strength", sep="\n"))
    return figure


def table_latex(results: Results) -> str:
    """A row per (strategy, strength), `none` first: every metric's mean and CI, * against `none`."""
    rows = []
    for (_, label), cells in zip(results.runs, run_rows(results, INTERVAL_METRICS)):
        strategy, strength = parse_strategy_label(label)
        rows.append([escape_latex(strategy), MISSING if strength is None else f"{strength:g}", *cells[2:]])
    caption = " ".join([f"Ablation of augmentation strategies and strengths ({results.methods[0]}).", ci_note(results),
                        significance_note(results), definitions_note(results)])
    return booktabs(["Strategy", "Strength", *(m.label for m in INTERVAL_METRICS)], "ll" + "r" * len(INTERVAL_METRICS),
                    [Block(rows)], results.caption(caption), "tab:ablation")


def write_ablation_report(results: Results, out_dir: str | Path) -> list[Path]:
    """paper/ablation/: strength.{pdf,png}, plane.{pdf,png}, ablation.tex, numbers.tex (the paper's numbers),
    written whole."""
    with atomic_dir(out_dir) as tmp:
        for name, figure in (("strength", strength_figure(results)), ("plane", plane_figure(results))):
            save(figure, tmp, name)
            plt.close(figure)
        (tmp / "ablation.tex").write_text(table_latex(results))
        write_numbers(study_numbers(results, "ablation") | {"ablation/method": escape_latex(results.methods[0])},
                      tmp / "numbers.tex")
    return sorted(Path(out_dir).iterdir())
