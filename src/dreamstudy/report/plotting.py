"""What every figure shares: headless matplotlib, seaborn, saving as PDF and PNG without timestamps, and bars
with the CIs of stats.csv (so figures and tables show the same intervals)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

matplotlib.use("Agg")  # the stage runs headless under DVC; pyplot (also seaborn's) must come after this
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["interval_bars", "plt", "save", "sns"]

PNG_DPI = 150
BAR_GROUP_WIDTH = 0.8  # of the space between two methods, shared by their strategies' bars


def save(figure: Figure, folder: Path, name: str) -> None:
    figure.savefig(folder / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    figure.savefig(folder / f"{name}.png", bbox_inches="tight", dpi=PNG_DPI)


def interval_bars(ax: Axes, stats: pd.DataFrame, methods: list[str], strategies: list[str]) -> dict:
    """Grouped bars of one metric's stats.csv rows: x = method, a bar per strategy (mean), error bar = its CI.

    Returns {(method, strategy): x position of its bar}, for marks drawn on top."""
    width = BAR_GROUP_WIDTH / len(strategies)
    positions = {}
    for k, (strategy, color) in enumerate(zip(strategies, sns.color_palette(n_colors=len(strategies)))):
        rows = stats[stats["strategy"] == strategy].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + (k - (len(strategies) - 1) / 2) * width
        ax.bar(x, rows["mean"], width, color=color, label=strategy)
        ax.errorbar(x, rows["mean"], yerr=[rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=2)
        positions |= {(method, strategy): position for method, position in zip(methods, x)}
    ax.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right")  # 4 method names side by side
    if stats["mean"].isna().all():  # e.g. PRES of runs without pres.jsonl: say so rather than draw blank axes
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="gray")
    return positions
