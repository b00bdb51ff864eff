"""LaTeX (booktabs) tables of the DreamBench scores: one .tex per table, each with \\caption and \\label."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dreamstudy.report.load import METRICS, RUN_KEYS, Results

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def main_table(results: Results) -> pd.DataFrame:
    """Method x strategy: each score averaged over all generated images (the DreamBench protocol), and n."""
    runs = results.per_image.groupby(RUN_KEYS, sort=False)
    table = runs[list(METRICS)].mean().rename(columns=METRICS)
    table["n"] = runs.size()
    return table.reset_index().rename(columns={"method": "Method", "strategy": "Strategy"})


def per_subject_table(results: Results) -> pd.DataFrame:
    """One row per subject; a column group per (method, strategy) with its three scores."""
    per_subject = results.per_subject.assign(run=lambda t: t["method"] + " / " + t["strategy"])
    runs = list(dict.fromkeys(per_subject["run"]))
    wide = per_subject.pivot(index=["subject", "class"], columns="run", values=list(METRICS))
    wide = wide.rename(columns=METRICS, level=0).swaplevel(axis="columns")
    wide = wide.reindex(columns=pd.MultiIndex.from_product([runs, METRICS.values()]))
    return wide.reset_index().rename(columns={"subject": "Subject", "class": "Class"})


def write_tables(results: Results, tables_dir: str | Path) -> None:
    """main.tex and per_subject.tex into `tables_dir` (a temporary folder: see `write_report`)."""
    tables_dir = Path(tables_dir)
    encoders = f"DINO: {results.encoders.dino}; CLIP: {results.encoders.clip}"
    tables = {
        "main": (main_table(results), "tab:main",
                 "DreamBench scores per method and augmentation strategy, each the mean over all n "
                 f"generated images ({encoders})."),
        "per_subject": (per_subject_table(results), "tab:per-subject",
                        f"DreamBench scores per subject, method and augmentation strategy ({encoders})."),
    }
    for name, (table, label, caption) in tables.items():
        (tables_dir / f"{name}.tex").write_text(to_latex(table, results.caption(caption), label))


def to_latex(table: pd.DataFrame, caption: str, label: str, bold_max: tuple[str, ...] = ()) -> str:
    """A booktabs table: text left-aligned, numbers right-aligned with 3 decimals, LaTeX specials escaped;
    the largest value of each `bold_max` column in bold."""
    alignment = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in table.dtypes)
    styler = (table.style.hide(axis="index")
              .format(precision=3, escape="latex")
              .format_index(escape="latex", axis="columns"))
    if bold_max:
        styler = styler.highlight_max(subset=list(bold_max), props="textbf:--rwrap;")
    return styler.to_latex(column_format=alignment, hrules=True, multicol_align="c", position_float="centering",
                           caption=escape_latex(caption), label=label)


def escape_latex(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)
