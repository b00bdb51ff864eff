"""Published DreamBench numbers (published.csv, from the papers' tables as quoted in REFERENCE.md), shown beside
ours as a separate block of the tables, each row keyed by a letter to its source in the caption."""

from __future__ import annotations

import string
from importlib import resources

import pandas as pd

from dreamstudy.metrics.registry import METRICS, Metric
from dreamstudy.report.latex import MISSING, escape_latex, number

NUMBERS = [m.name for m in METRICS if m.published]
COLUMNS = ["method", "variant", *NUMBERS, "paper", "table", "subjects", "citation"]


def load_published() -> pd.DataFrame:
    """published.csv with a `key` letter per (paper, table), in order of first appearance."""
    source = resources.files("dreamstudy.report") / "published.csv"
    with source.open() as handle:
        table = pd.read_csv(handle, dtype={"method": str, "variant": str, "paper": str, "citation": str})
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:  # a packaging or editing slip; the file ships with the code
        raise ValueError(f"{source}: missing column(s) {missing}")
    table[NUMBERS] = table[NUMBERS].apply(pd.to_numeric, errors="raise")
    sources = list(dict.fromkeys(zip(table["paper"], table["table"])))
    table["key"] = [string.ascii_lowercase[sources.index(s)] for s in zip(table["paper"], table["table"])]
    return table


def published_rows(published: pd.DataFrame, metrics: list[Metric], trailing: int = 0) -> list[list[str]]:
    """LaTeX rows: method with its source letter, variant (or --), the `metrics` (-- where the papers report
    none), then `trailing` empty cells."""
    return [[rf"{escape_latex(row.method)}$^{{\mathrm{{{row.key}}}}}$",
             escape_latex(row.variant) if isinstance(row.variant, str) else MISSING,
             *(number(getattr(row, m.name)) if m.published else MISSING for m in metrics), *[MISSING] * trailing]
            for row in published.itertuples(index=False)]


def sources_note(published: pd.DataFrame) -> str:
    """'a: Ruiz et al., DreamBooth, CVPR 2023, Table 1 (30 subjects); b: ...' for the rows shown."""
    notes = []
    for (key, citation, table), rows in published.groupby(["key", "citation", "table"], sort=True):
        subjects = rows["subjects"].dropna()
        size = f" ({int(subjects.iloc[0])} subjects)" if len(subjects) else ""
        notes.append(f"{key}: {citation}, Table {table}{size}")
    return "; ".join(notes)
