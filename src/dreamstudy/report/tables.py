"""LaTeX (booktabs) tables of the study: one .tex per table, each with \\caption and \\label.

main.tex: DINO, CLIP-I, CLIP-T per run (mean and CI, * = significant against `none`), the real-images
upper bound, and published numbers in their own block, each citing its paper and table; overfitting.tex: DIV,
PRES, PRES of the base model and the memorized share, with DreamBooth's prior-preservation ablation;
breakdown.tex: scores by prompt kind and live vs object; per_subject.tex: every subject's scores (a long table);
settings.tex: each method's training settings (from params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dreamstudy.layout import BASELINE
from dreamstudy.metrics.registry import CLIP_T, DIV, MEMORIZED, PRES, PRES_BASE, Metric
from dreamstudy.params import MethodParams
from dreamstudy.report.latex import MISSING, Block, booktabs, escape_latex, estimate, long_table, number
from dreamstudy.report.load import LABELS, MAIN_METRICS, OVERFITTING_METRICS, RUN_KEYS, SUBJECT_KEYS, Results
from dreamstudy.report.published import load_published, published_rows, sources_note

__all__ = ["write_tables"]  # also read by the ablation's report: run_rows and the caption notes


@dataclass(frozen=True)
class Settings:
    """What the runs were trained with (params.yaml), for the settings table."""

    methods: dict[str, MethodParams]  # every method of the results
    class_images: int  # priors.num_images
    prior_weight: float  # priors.weight
    strength: float  # aug.strength


BY_LABELS = {"prompt_kind": "prompt kind", "live": "subject"}
PUBLISHED_TITLE = "Published (other protocols: see caption)"
REAL_NOTE = ("n: generated images per run. Real images: mean similarity between different real photos of a "
             "subject, averaged over subjects (the upper bound).")


def run_rows(results: Results, metrics: list[Metric]) -> list[list[str]]:
    """One row per run: method, strategy, then each metric's mean and CI from stats.csv, '*' when tests.csv
    finds it significantly different from `none` of the same method; a metric without an interval, its mean
    over the run's subjects."""
    stats = results.stats.set_index([*RUN_KEYS, "metric"])
    tests = results.tests
    marked = set(tests.loc[(tests["baseline"] == BASELINE) & tests["significant"], [*RUN_KEYS, "metric"]]
                 .itertuples(index=False, name=None))
    means = results.per_subject.groupby(RUN_KEYS)[[m.name for m in metrics if not m.interval]].mean()  # skips NaN
    rows = []
    for method, strategy in results.runs:
        cells = []
        for metric in metrics:
            if metric.interval:
                row = stats.loc[(method, strategy, metric.name)]
                cells.append(estimate(row["mean"], row["ci_low"], row["ci_high"],
                                      (method, strategy, metric.name) in marked))
            else:
                cells.append(number(means.loc[(method, strategy), metric.name]))
        rows.append([escape_latex(method), escape_latex(strategy), *cells])
    return rows


def main_table(results: Results) -> str:
    """DreamBench's scores (DINO, CLIP-I, CLIP-T) and n (generated images) per run; real images; published rows."""
    n_images = results.per_image.groupby(RUN_KEYS, sort=False).size()
    ours = [[*row, str(n_images[run])] for row, run in zip(run_rows(results, MAIN_METRICS), results.runs)]
    real_row = ["Real images (upper bound)", MISSING,
                *(number(results.real_images[m.name].mean()) if m.real_images else MISSING for m in MAIN_METRICS),
                MISSING]
    published = load_published()
    caption = " ".join(["DreamBench scores per method and augmentation strategy.", ci_note(results),
                        significance_note(results), REAL_NOTE, protocol_note(results), published_note(published)])
    header = ["Method", "Strategy", *(m.label for m in MAIN_METRICS), "n"]
    return booktabs(header, "ll" + "r" * (len(header) - 2),
                    [Block(ours), Block([real_row]),
                     Block(published_rows(published, MAIN_METRICS, trailing=1), PUBLISHED_TITLE)],
                    results.caption(caption), "tab:main")


def overfitting_table(results: Results) -> str:
    """The overfitting measures per run (DIV, PRES, the base model's PRES, without a CI, and the memorized share);
    DreamBooth's prior-preservation ablation below."""
    published = load_published().dropna(subset=[m.name for m in OVERFITTING_METRICS if m.published], how="all")
    caption = " ".join(["Diversity, prior preservation and memorization per method and augmentation strategy.",
                        ci_note(results), significance_note(results), definitions_note(results), protocol_note(results),
                        published_note(published, scores=False)])
    header = ["Method", "Strategy", *(m.label for m in OVERFITTING_METRICS)]
    return booktabs(header, "ll" + "r" * (len(header) - 2),
                    [Block(run_rows(results, OVERFITTING_METRICS)),
                     Block(published_rows(published, OVERFITTING_METRICS), PUBLISHED_TITLE)],
                    results.caption(caption), "tab:overfitting")


def breakdown_table(results: Results) -> str:
    """Each metric of breakdown.csv per run, in blocks by prompt kind and by live vs object subjects."""
    breakdown = results.breakdown
    metrics = ordered_metrics(breakdown["metric"])
    blocks = []
    for (by, group), rows in breakdown.groupby(["by", "group"], sort=False):
        wide = rows.pivot(index=RUN_KEYS, columns="metric", values="value").reindex(columns=metrics)
        wide = wide.loc[[run for run in results.runs if run in wide.index]]  # pivot sorted the runs
        blocks.append(Block([[escape_latex(method), escape_latex(strategy), *map(number, values)]
                             for (method, strategy), values in zip(wide.index, wide.to_numpy())],
                            f"{BY_LABELS.get(by, by).capitalize()}: {group}"))
    caption = ("DreamBench scores by prompt kind and by live vs object subjects: mean over the generated images "
               f"of each group. {protocol_note(results)}")
    return booktabs(["Method", "Strategy", *(LABELS.get(m, m) for m in metrics)], "ll" + "r" * len(metrics),
                    blocks, results.caption(caption), "tab:breakdown")


def ordered_metrics(metrics: pd.Series) -> list[str]:
    """The metrics present, in the order of LABELS, unknown ones after them."""
    present = list(dict.fromkeys(metrics))
    return [m for m in LABELS if m in present] + [m for m in present if m not in LABELS]


def per_subject_table(results: Results) -> pd.DataFrame:
    """One row per (subject, method, strategy) with its three scores: long, so that it fits the page at any grid
    size (a longtable breaks across pages)."""
    table = results.per_subject.set_index(RUN_KEYS).loc[results.runs].reset_index()  # runs in table order
    table = table.sort_values("subject", key=lambda s: s.map(results.subjects.index), kind="stable")
    table = table[["subject", "class", *RUN_KEYS, *(m.name for m in MAIN_METRICS)]]
    return table.rename(columns={"subject": "Subject", "class": "Class", "method": "Method", "strategy": "Strategy",
                                 **LABELS})


def setting(value) -> str:
    """1e-05 -> '1e-05', True -> 'yes'."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_table(results: Results, settings: Settings) -> str:
    """A row per method: steps, learning rate, batch, prior preservation and its own settings (rank, ...)."""
    common = set(MethodParams.model_fields)
    rows = []
    for method in results.methods:
        p = settings.methods[method]
        own = ", ".join(f"{name.replace('_', ' ')} {setting(value)}"
                        for name, value in p.model_dump().items() if name not in common)
        rows.append([escape_latex(method), str(p.steps), f"{p.lr:g}", str(p.batch_size),
                     setting(p.prior_preservation), escape_latex(own) or MISSING])
    caption = (f"Training settings per method (params.yaml, train section): AdamW steps, learning rate and instance "
               f"images per step. Prior preservation: {settings.class_images} class images per class, loss weight "
               f"{settings.prior_weight:g}. Augmentation strength {settings.strength:g} for every strategy but "
               f"'{BASELINE}'.")
    return booktabs(["Method", "Steps", "LR", "Batch", "Prior pres.", "Other"], "lrrrlp{0.35\\linewidth}",
                    [Block(rows)], results.caption(caption), "tab:settings")


def definitions_note(results: Results) -> str:
    return (f"{DIV.label}: mean pairwise LPIPS distance between the images of one prompt ({DIV.meaning}; LPIPS "
            f"network: {results.encoders.lpips}). {PRES.label}: mean DINO similarity of the model's 'a photo of a "
            f"[class]' images to the subject's real photos ({PRES.meaning}); {PRES_BASE.label}: the "
            f"same for the base model's images of the same seeds, mean over subjects. {MEMORIZED.label}: share of "
            "generated images whose highest DINO similarity to a training image exceeds "
            f"{results.memorization_threshold:g}. {MISSING}: not measured.")


def ci_note(results: Results) -> str:
    return (f"Our runs: mean with its {results.ci_label} as offsets (hierarchical bootstrap over subjects and, "
            "within each, prompts).")


def significance_note(results: Results) -> str:
    if results.tests.empty:
        return f"No significance tests (the grid has no '{BASELINE}' baseline)."
    return (f"*: p < {results.alpha:g} against '{BASELINE}' of the same method, Wilcoxon signed-rank test on "
            "per-subject paired differences (no mark where it cannot run: fewer than 2 subjects or no differences), "
            "not corrected for the number of comparisons.")


def protocol_note(results: Results) -> str:
    """What our numbers are: base model, sampler, size of the protocol, encoders."""
    image = results.per_image
    prompts = image.groupby("subject")["prompt_index"].nunique()
    per_prompt = image.groupby([*SUBJECT_KEYS, "prompt_index"]).size()
    enc = results.encoders
    sampling = " or ".join(f"{scheduler} {steps} steps" for scheduler, steps in results.sampling)
    return (f"Our protocol: {', '.join(results.models)}, {sampling}; {image['subject'].nunique()} subjects x "
            f"{span(prompts)} prompts x {span(per_prompt)} images per prompt; DINO {enc.dino}, CLIP {enc.clip}, "
            "with the preprocessing of Custom Diffusion's evaluation script (bicubic resize, centre crop 224); "
            f"{CLIP_T.label} is the raw cosine to the prompt without the identifier token, not CLIPScore "
            "(2.5 x cosine).")


def published_note(published: pd.DataFrame, scores: bool = True) -> str:
    """The sources of the published rows and, for DreamBench's scores (`scores`), how their protocol differs."""
    differences = ("; DreamBooth names neither its CLIP backbone nor its preprocessing, and whether "
                   f"{CLIP_T.label} keeps the identifier is not standardised") if scores else ""
    return (f"Published rows: from the paper and table cited in the row ({sources_note(published)}); base model as "
            f"named in the row{differences}.")


def span(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def write_tables(results: Results, tables_dir: str | Path) -> None:
    """main, overfitting, breakdown and per_subject .tex into `tables_dir` (a temporary folder: see
    `write_report`)."""
    tables_dir = Path(tables_dir)
    encoders = f"DINO: {results.encoders.dino}; CLIP: {results.encoders.clip}"
    per_subject = long_table(per_subject_table(results), results.caption(
        f"DreamBench scores per subject, method and augmentation strategy ({encoders})."), "tab:per-subject")
    for name, text in {"main": main_table(results), "overfitting": overfitting_table(results),
                       "breakdown": breakdown_table(results), "per_subject": per_subject}.items():
        (tables_dir / f"{name}.tex").write_text(text)
