"""The ablation's report: each metric against strength per strategy, the DINO-CLIP-T plane with one point
per (strategy, strength), and a table of every (strategy, strength) with the best of each column in bold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from dreamstudy.io import atomic_dir
from dreamstudy.layout import parse_strategy_label
from dreamstudy.report.figures import plt, save, sns
from dreamstudy.report.load import METRICS, Results
from dreamstudy.report.tables import to_latex


def with_strength(scores: pd.DataFrame) -> pd.DataFrame:
    """Split the ablation's strategy labels ("classic@0.5") into strategy and strength columns."""
    parsed = scores["strategy"].map(parse_strategy_label)
    return scores.assign(strategy=parsed.str[0], strength=parsed.str[1])


def strength_figure(results: Results, *, seed: int) -> Figure:
    """One panel per metric: mean over subjects against strength, a line per strategy, 95% CI band."""
    scores = with_strength(results.per_subject).melt(
        id_vars=["strategy", "strength", "subject"], value_vars=list(METRICS), var_name="metric",
        value_name="score")
    scores["metric"] = scores["metric"].map(METRICS)
    with sns.axes_style("whitegrid"):
        grid = sns.relplot(data=scores, kind="line", x="strength", y="score", hue="strategy", col="metric",
                           col_order=list(METRICS.values()), errorbar=("ci", 95), seed=seed, marker="o",
                           facet_kws={"sharey": False}, height=3, aspect=0.9)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(results.caption("Ablation: scores against augmentation strength (mean over subjects, "
                                         "95% CI over subjects)", sep="\n"), y=1.0, va="bottom")
    return grid.figure


def plane_figure(results: Results) -> Figure:
    """DINO against CLIP-T, one point per (strategy, strength), sized by strength."""
    means = ablation_table(results)
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        sns.scatterplot(data=means, x="clip_t", y="dino", hue="strategy", size="strength", sizes=(30, 200),
                        edgecolor="black", ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
    ax.set(xlabel="CLIP-T (prompt fidelity)", ylabel="DINO (subject fidelity)")
    figure.suptitle(results.caption("Ablation: DINO against CLIP-T per strategy and strength", sep="\n"))
    return figure


def ablation_table(results: Results) -> pd.DataFrame:
    """Mean over all generated images of each (strategy, strength), as the DreamBench protocol averages."""
    scores = with_strength(results.per_image)
    return (scores.groupby(["strategy", "strength"], sort=True)[list(METRICS)].mean().reset_index())


def table_latex(results: Results) -> str:
    table = ablation_table(results).rename(columns=METRICS | {"strategy": "Strategy", "strength": "Strength"})
    table["Strength"] = table["Strength"].map("{:g}".format)
    caption = results.caption(f"Ablation of augmentation strategies and strengths ({results.methods[0]}; mean "
                              "over all generated images; best of each column in bold).")
    return to_latex(table, caption, "tab:ablation", bold_max=tuple(METRICS.values()))


def write_ablation_report(results: Results, out_dir: str | Path, *, seed: int) -> list[Path]:
    """paper/ablation/: strength.{pdf,png}, plane.{pdf,png}, ablation.tex, written whole."""
    with atomic_dir(out_dir) as tmp:
        for name, figure in (("strength", strength_figure(results, seed=seed)), ("plane", plane_figure(results))):
            save(figure, tmp, name)
            plt.close(figure)
        (tmp / "ablation.tex").write_text(table_latex(results))
    return sorted(Path(out_dir).iterdir())
