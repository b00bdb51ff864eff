"""The multi-concept study's report, paper/multi/: the table of every variant with its intervals and the
published rows beside it, the fidelity(min)-vs-CLIP-T plane, and a sample grid per pair (rows: variants,
columns: prompts), from results/multi/ alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from PIL import Image

from dreamstudy.io import atomic_dir
from dreamstudy.metrics.multi_study import RETAINED
from dreamstudy.metrics.registry import (
    BOTH_FOUND,
    CLIP_T,
    CROP_CLIP_I,
    CROP_DINO,
    CROP_METRICS,
    DINO_MIN,
    MIXING,
    MULTI_METRICS,
)
from dreamstudy.metrics.scores import ENCODERS
from dreamstudy.models.loading import RANDOM_MODELS
from dreamstudy.report.latex import MISSING, Block, booktabs, escape_latex, estimate, number
from dreamstudy.report.load import RANDOM_INIT_LABEL, RANDOM_MODEL_LABEL
from dreamstudy.report.plotting import plt, save, sns

PUBLISHED = Path(__file__).with_name("published_multi.csv")
GRID_CELL = 1.6  # inches per image in the sample grids


def labels(encoders: dict, per_image: pd.DataFrame) -> list[str]:
    """What the numbers are not: random encoders, random base models."""
    notes = [] if encoders["pretrained"] else [RANDOM_INIT_LABEL]
    return notes + [RANDOM_MODEL_LABEL.format(model=m) for m in sorted(set(per_image["model"])) if m in RANDOM_MODELS]


WHOLE_IMAGE = tuple(m for m in MULTI_METRICS if m not in CROP_METRICS)  # table.tex's columns


def variant_rows(stats: pd.DataFrame, tests: pd.DataFrame, metrics: tuple) -> list[list[str]]:
    """A row per variant: its means of `metrics` with their intervals, * where it differs from the tests'
    baseline (joint training) at their alpha."""
    significant = {(r.variant, r.metric) for r in tests.itertuples() if r.significant}
    rows = []
    for variant, runs in stats.groupby("variant", sort=False):
        by_metric = runs.set_index("metric")
        rows.append([escape_latex(variant)] + [
            estimate(by_metric.at[m.name, "mean"], by_metric.at[m.name, "ci_low"], by_metric.at[m.name, "ci_high"],
                     (variant, m.name) in significant) for m in metrics])
    return rows


def intervals_and_tests(stats: pd.DataFrame, tests: pd.DataFrame) -> str:
    """The captions' sentence on intervals and stars."""
    baseline = tests["baseline"].iloc[0] if len(tests) else None
    return (f"Means over pairs with {stats['confidence'].iloc[0]:.0%} hierarchical bootstrap intervals (pairs, then "
            "prompts). " + (f"* differs from {baseline} (paired Wilcoxon over pairs, p < {tests['alpha'].iloc[0]}). "
                            if baseline else ""))


def table_latex(stats: pd.DataFrame, tests: pd.DataFrame, notes: list[str]) -> str:
    """Every variant's whole-image measures, then the published rows (their protocols in the caption)."""
    published = pd.read_csv(PUBLISHED)
    cited = [[escape_latex(row.variant)] + [number(getattr(row, m.name)) if m.name in published.columns else MISSING
                              for m in WHOLE_IMAGE] for row in published.itertuples()]
    caption = ("Multi-concept personalization. " + intervals_and_tests(stats, tests)
               + "DINO and CLIP-I: the whole image against each subject's photos, mean and minimum over the two "
               "subjects; CLIP-T: raw cosine to the prompt without identifiers; CLIPScore: 2.5 x max(CLIP-T, 0). "
               + "Published rows: " + " ".join(f"{'; '.join(rows.variant)}: {protocol}."
                                               for protocol, rows in published.groupby("protocol", sort=False))
               + " " + " ".join(notes))
    header = ["Variant", *(m.label for m in WHOLE_IMAGE)]
    return booktabs(header, "l" + "r" * len(WHOLE_IMAGE), [Block(variant_rows(stats, tests, WHOLE_IMAGE)),
                                                            Block(cited, "Published")], caption.strip(), "tab:multi")


def crops_latex(stats: pd.DataFrame, tests: pd.DataFrame, detector: str, notes: list[str]) -> str:
    """Every variant's measures on the detector's crops (no published counterpart)."""
    caption = (f"Multi-concept personalization on detector crops ({detector}, each subject queried "
               "by its class noun). " + intervals_and_tests(stats, tests)
               + f"{BOTH_FOUND.label}: {BOTH_FOUND.meaning}. {CROP_DINO.label} and {CROP_CLIP_I.label}: each found "
               "subject's crop against its own photos. "
               f"{MIXING.label}: {MIXING.meaning} than to its own. " + " ".join(notes))
    header = ["Variant", *(m.label for m in CROP_METRICS)]
    return booktabs(header, "l" + "r" * len(CROP_METRICS), [Block(variant_rows(stats, tests, CROP_METRICS))],
                    caption.strip(), "tab:multi-crops")


def retention_latex(retention: pd.DataFrame, notes: list[str]) -> str:
    """Per plain variant and retained measure: each subject alone from the pair's model, its single-concept
    model on the same prompts and seeds, and their difference with its interval (* where Wilcoxon over pairs
    finds it differs from 0)."""
    rows = []
    for variant, runs in retention.groupby("variant", sort=False):
        by_metric = runs.set_index("metric")
        cells = []
        for metric in RETAINED:
            row = by_metric.loc[metric.name]
            cells += [number(row["mean"]), number(row["single"]),
                      estimate(row["mean_diff"], row["ci_low"], row["ci_high"], bool(row["significant"]))]
        rows.append([escape_latex(variant), *cells])
    confidence = retention["confidence"].iloc[0] if len(retention) else math.nan
    alpha = retention["alpha"].iloc[0] if len(retention) else math.nan
    caption = ("Retention: each subject alone, on its DreamBench prompts, from the pair's model against its own "
               "single-concept model of the main study (same method, original images, same prompts and seeds). "
               f"Means over pairs; the difference with {confidence:.0%} hierarchical bootstrap intervals (pairs, "
               f"then prompts); * where it differs from 0 (Wilcoxon over pairs, p < {alpha}). " + " ".join(notes))
    header = ["Variant", *(f"{m.label} {part}" for m in RETAINED for part in ("pair model", "single", "difference"))]
    return booktabs(header, "l" + "r" * 3 * len(RETAINED), [Block(rows)], caption.strip(), "tab:multi-retention")


def plane_figure(stats: pd.DataFrame, folder: Path, notes: list[str]) -> None:
    """DINO (min) against CLIP-T per variant, with both intervals: fidelity to the less faithful subject
    against prompt fidelity."""
    wide = stats.pivot(index="variant", columns="metric", values=["mean", "ci_low", "ci_high"])
    figure, ax = plt.subplots(figsize=(5, 4))
    for variant, color in zip(wide.index, sns.color_palette(n_colors=len(wide))):
        x, y = wide.at[variant, ("mean", CLIP_T.name)], wide.at[variant, ("mean", DINO_MIN.name)]
        xerr = [[x - wide.at[variant, ("ci_low", CLIP_T.name)]], [wide.at[variant, ("ci_high", CLIP_T.name)] - x]]
        yerr = [[y - wide.at[variant, ("ci_low", DINO_MIN.name)]], [wide.at[variant, ("ci_high", DINO_MIN.name)] - y]]
        has_ci = not any(math.isnan(v[0]) for v in (*xerr, *yerr))
        ax.errorbar(x, y, xerr=xerr if has_ci else None, yerr=yerr if has_ci else None, fmt="o", color=color,
                    label=variant, capsize=2)
    ax.set_xlabel(CLIP_T.label)
    ax.set_ylabel(f"{DINO_MIN.label}: {DINO_MIN.meaning}")
    ax.legend(fontsize="small")
    if notes:
        ax.set_title("\n".join(notes), fontsize="x-small")
    save(figure, folder, "fidelity_vs_clip_t")
    plt.close(figure)


def sample_grids(per_image: pd.DataFrame, samples_root: Path, folder: Path) -> None:
    """Per pair, the first image of each prompt (columns) from each variant (rows)."""
    first = per_image[per_image["image_index"] == 0]
    for pair, images in first.groupby("pair", sort=True):
        variants = list(dict.fromkeys(images["variant"]))
        prompts = sorted(set(images["prompt_index"]))
        figure, axes = plt.subplots(len(variants), len(prompts), squeeze=False,
                                    figsize=(GRID_CELL * len(prompts), GRID_CELL * len(variants)))
        for row in images.itertuples():
            ax = axes[variants.index(row.variant)][prompts.index(row.prompt_index)]
            with Image.open(samples_root / row.variant / "none" / pair / row.file) as image:
                ax.imshow(image.convert("RGB"))
        for r, variant in enumerate(variants):
            for c in range(len(prompts)):
                axes[r][c].set_xticks([])
                axes[r][c].set_yticks([])
            axes[r][0].set_ylabel(variant, fontsize="small")
        for c, index in enumerate(prompts):
            prompt = images[images["prompt_index"] == index]["prompt"].iloc[0]
            axes[0][c].set_title(prompt, fontsize="xx-small", wrap=True)
        save(figure, folder, f"samples_{pair}")
        plt.close(figure)


def write_multi_report(metrics_dir: Path, samples_root: Path, out_dir: Path) -> list[Path]:
    """paper/multi/ appears whole: table.tex, crops.tex, retention.tex, fidelity_vs_clip_t.{pdf,png},
    samples_<pair>.{pdf,png}."""
    stats = pd.read_csv(metrics_dir / "stats.csv")
    retention = pd.read_csv(metrics_dir / "retention.csv")
    tests = pd.read_csv(metrics_dir / "tests.csv")
    per_image = pd.read_csv(metrics_dir / "per_image.csv")
    encoders = json.loads((metrics_dir / ENCODERS).read_text())
    notes = labels(encoders, per_image)
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.tex").write_text(table_latex(stats, tests, notes))
        (tmp / "crops.tex").write_text(crops_latex(stats, tests, encoders["detector"], notes))
        (tmp / "retention.tex").write_text(retention_latex(retention, notes))
        plane_figure(stats, tmp, notes)
        sample_grids(per_image, samples_root, tmp)
    return sorted(out_dir.iterdir())
