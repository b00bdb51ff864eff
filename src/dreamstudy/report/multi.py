"""The multi-concept study's report, paper/multi/: the table of every variant with its intervals and the
published rows beside it, the fidelity(min)-vs-CLIP-T plane, and a sample grid per pair (rows: variants,
columns: prompts, after the training photos), from results/multi/ and the training photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dreamstudy.io import atomic_dir
from dreamstudy.layout import key_subjects
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
from dreamstudy.report.figures import thumbnail
from dreamstudy.report.latex import MISSING, Block, booktabs, escape_latex, estimate, number
from dreamstudy.report.load import RANDOM_INIT_LABEL, RANDOM_MODEL_LABEL
from dreamstudy.report.paper import best, figure_list, significance, write_numbers
from dreamstudy.report.plotting import plt, save, sns
from dreamstudy.report.published import cite

PUBLISHED = Path(__file__).with_name("published_multi.csv")
GRID_CELL = 1.6  # inches per image in the sample grids


def labels(encoders: dict, per_image: pd.DataFrame) -> list[str]:
    """What the numbers are not: random encoders, random base models."""
    notes = [] if encoders["pretrained"] else [RANDOM_INIT_LABEL]
    return notes + [RANDOM_MODEL_LABEL.format(model=m) for m in sorted(set(per_image["model"])) if m in RANDOM_MODELS]


WHOLE_IMAGE = tuple(m for m in MULTI_METRICS if m not in CROP_METRICS)
# the whole-image measures in two tables, each narrow enough for a page: subject fidelity, prompt fidelity
FIDELITY = tuple(m for m in WHOLE_IMAGE if m.name.startswith(("dino", "clip_i")))  # table.tex
PROMPT = tuple(m for m in WHOLE_IMAGE if m not in FIDELITY)  # prompt.tex: CLIP-T, CLIPScore, DIV


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


def where(sections: pd.Series) -> str:
    """' (section Multiple concept)': where in their source the published rows are, if it says."""
    named = list(dict.fromkeys(sections.dropna()))
    return f" (section {'; '.join(named)})" if named else ""


def table_latex(stats: pd.DataFrame, tests: pd.DataFrame, notes: list[str], metrics: tuple = FIDELITY) -> str:
    """Every variant's whole-image `metrics`, then the published rows that report any of them (their sources
    cited, their protocols in the caption): tab:multi (FIDELITY) or tab:multi-prompt (PROMPT)."""
    published = pd.read_csv(PUBLISHED, dtype={"section": str})
    published = published[published[[m.name for m in metrics if m.name in published]].notna().any(axis=1)]
    cited = [[f"{escape_latex(row.variant)} {cite(row.bibkey)}"]
             + [number(getattr(row, m.name)) if m.name in published.columns else MISSING for m in metrics]
             for row in published.itertuples()]
    caption = ("Multi-concept personalization, " + ("subject fidelity. " if metrics == FIDELITY else
                                                     "prompt fidelity and diversity. ")
               + intervals_and_tests(stats, tests)
               + "DINO and CLIP-I: the whole image against each subject's photos, mean and minimum over the two "
               "subjects; CLIP-T: raw cosine to the prompt without identifiers; CLIPScore: 2.5 x max(CLIP-T, 0). "
               + "Published rows: " + " ".join(f"{'; '.join(rows.variant)}{where(rows.section)}: {protocol}."
                                               for protocol, rows in published.groupby("protocol", sort=False))
               + " " + " ".join(notes))
    header = ["Variant", *(m.label for m in metrics)]
    return booktabs(header, "l" + "r" * len(metrics), [Block(variant_rows(stats, tests, metrics)),
                                                       Block(cited, "Published")], caption.strip(),
                    "tab:multi" if metrics == FIDELITY else "tab:multi-prompt")


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
    blocks = []
    for variant, runs in retention.groupby("variant", sort=False):  # a block per variant, a row per measure
        by_metric = runs.set_index("metric")
        rows = [[escape_latex(variant) if k == 0 else "", metric.label, number(by_metric.at[metric.name, "mean"]),
                 number(by_metric.at[metric.name, "single"]),
                 estimate(*by_metric.loc[metric.name, ["mean_diff", "ci_low", "ci_high"]],
                          bool(by_metric.at[metric.name, "significant"]))]
                for k, metric in enumerate(RETAINED)]
        blocks.append(Block(rows))
    confidence = retention["confidence"].iloc[0] if len(retention) else math.nan
    alpha = retention["alpha"].iloc[0] if len(retention) else math.nan
    caption = ("Retention: each subject alone, on its DreamBench prompts, from the pair's model against its own "
               "single-concept model of the main study (same method, original images, same prompts and seeds). "
               f"Means over pairs; the difference with {confidence:.0%} hierarchical bootstrap intervals (pairs, "
               f"then prompts); * where it differs from 0 (Wilcoxon over pairs, p < {alpha}). " + " ".join(notes))
    header = ["Variant", "Measure", "Pair model", "Single", "Difference"]
    return booktabs(header, "llrrr", blocks, caption.strip(), "tab:multi-retention")


def multi_numbers(stats: pd.DataFrame, tests: pd.DataFrame, per_image: pd.DataFrame, notes: list[str]) -> dict:
    """What the paper's text cites of the multi-concept study: its size, every variant's mean of every measure,
    the best variant of each and the tests against joint training."""
    means = stats.set_index(["variant", "metric"])["mean"]
    entries = {"multi/pairs": str(per_image["pair"].nunique()), "multi/variants": str(stats["variant"].nunique()),
               "multi/labels": escape_latex(" ".join(notes))}
    entries |= {f"multi/{metric}/{variant}": number(mean) for (variant, metric), mean in means.items()}
    for metric in MULTI_METRICS:
        variant, value = best(means.xs(metric.name, level="metric"), lowest=metric.direction < 0)
        entries |= {f"multi/best/{metric.name}": number(value),
                    f"multi/best/{metric.name}/variant": escape_latex(variant or MISSING)}
    return entries | significance(tests, "multi")


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


def sample_grids(per_image: pd.DataFrame, samples_root: Path, photos: dict[str, list[Path]], folder: Path) -> None:
    """Per pair, the two subjects' training photos in the first column (a photo of each in turn, as many rows as
    there are), then the first image of each prompt (columns) from each variant (rows, named on the right)."""
    first = per_image[per_image["image_index"] == 0]
    for pair, images in first.groupby("pair", sort=True):
        variants = list(dict.fromkeys(images["variant"]))
        prompts = sorted(set(images["prompt_index"]))
        subjects = key_subjects(pair)
        figure, axes = plt.subplots(len(variants), 1 + len(prompts), squeeze=False,
                                    figsize=(GRID_CELL * (1 + len(prompts)), GRID_CELL * len(variants)))
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        for r in range(len(variants)):  # alternate the subjects: a photo of each, then the next of each
            subject, k = subjects[r % 2], r // 2
            if k < len(photos[subject]):
                axes[r][0].imshow(thumbnail(photos[subject][k]))  # photos are up to 2048 px: not into the PDF
                axes[r][0].set_xlabel(subject, fontsize="x-small")
        for row in images.itertuples():
            ax = axes[variants.index(row.variant)][1 + prompts.index(row.prompt_index)]
            ax.imshow(thumbnail(samples_root / row.variant / "none" / pair / row.file))
        for r, variant in enumerate(variants):  # on the right: the first column is the photos'
            axes[r][-1].yaxis.set_label_position("right")
            axes[r][-1].set_ylabel(variant, fontsize="small")
        axes[0][0].set_title("training photos", fontsize="xx-small")
        for c, index in enumerate(prompts, start=1):
            prompt = images[images["prompt_index"] == index]["prompt"].iloc[0]
            axes[0][c].set_title(prompt, fontsize="xx-small", wrap=True)
        save(figure, folder, f"samples_{pair}")
        plt.close(figure)


def write_multi_report(metrics_dir: Path, samples_root: Path, photos: dict[str, list[Path]],
                       out_dir: Path) -> list[Path]:
    """paper/multi/ appears whole: table.tex, prompt.tex, crops.tex, retention.tex, numbers.tex (the paper's numbers),
    fidelity_vs_clip_t.{pdf,png}, samples_<pair>.{pdf,png} and samples.tex (their figures); `photos`: each
    subject's training photos."""
    stats = pd.read_csv(metrics_dir / "stats.csv")
    retention = pd.read_csv(metrics_dir / "retention.csv")
    tests = pd.read_csv(metrics_dir / "tests.csv")
    per_image = pd.read_csv(metrics_dir / "per_image.csv")
    encoders = json.loads((metrics_dir / ENCODERS).read_text())
    notes = labels(encoders, per_image)
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.tex").write_text(table_latex(stats, tests, notes))
        (tmp / "prompt.tex").write_text(table_latex(stats, tests, notes, PROMPT))
        (tmp / "crops.tex").write_text(crops_latex(stats, tests, encoders["detector"], notes))
        (tmp / "retention.tex").write_text(retention_latex(retention, notes))
        write_numbers(multi_numbers(stats, tests, per_image, notes), tmp / "numbers.tex")
        plane_figure(stats, tmp, notes)
        sample_grids(per_image, samples_root, photos, tmp)
        (tmp / "samples.tex").write_text(figure_list([
            (f"multi/samples_{pair}.pdf", escape_latex(" ".join([f"Multi-concept samples of {pair}: the two "
                                                                 "subjects' training photos, then each variant "
                                                                 "(rows) per prompt (columns).", *notes])))
            for pair in sorted(set(per_image["pair"]))]))
    return sorted(out_dir.iterdir())
