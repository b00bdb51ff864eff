"""Published DreamBench numbers (published.csv), shown beside ours as a separate block of the tables, each row
citing its paper and table (`\\cite[Tab.~1]{ruiz2023dreambooth}`: paper/references.bib)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from dreamstudy.metrics.registry import METRICS, Metric
from dreamstudy.report.latex import MISSING, escape_latex, number

NUMBERS = [m.name for m in METRICS if m.published]
COLUMNS = ["method", "variant", *NUMBERS, "paper", "table", "subjects", "bibkey"]


def load_published() -> pd.DataFrame:
    """published.csv, checked."""
    source = resources.files("dreamstudy.report") / "published.csv"
    with source.open() as handle:
        table = pd.read_csv(handle, dtype={"method": str, "variant": str, "paper": str, "table": str, "bibkey": str})
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing or table["bibkey"].isna().any():  # a packaging or editing slip; the file ships with the code
        raise ValueError(f"{source}: missing column(s) {missing} or a row without its bibkey")
    table[NUMBERS] = table[NUMBERS].apply(pd.to_numeric, errors="raise")
    return table


def cite(bibkey: str, where: str | None = None) -> str:
    r"""'\cite[Tab.~1]{ruiz2023dreambooth}': a reference of paper/references.bib, at `where` in it."""
    return rf"\cite[{where}]{{{bibkey}}}" if where else rf"\cite{{{bibkey}}}"


def published_rows(published: pd.DataFrame, metrics: list[Metric], trailing: int = 0) -> list[list[str]]:
    """LaTeX rows: method with its citation (paper, table), variant (or --), the `metrics` (-- where the papers
    report none), then `trailing` empty cells."""
    return [[f"{escape_latex(row.method)} {cite(row.bibkey, f'Tab.~{row.table}')}",
             escape_latex(row.variant) if isinstance(row.variant, str) else MISSING,
             *(number(getattr(row, m.name)) if m.published else MISSING for m in metrics), *[MISSING] * trailing]
            for row in published.itertuples(index=False)]


def sources_note(published: pd.DataFrame) -> str:
    """'DreamBooth, Table 1: 30 subjects; ...' for the rows shown whose paper says on how many subjects."""
    sizes = published.dropna(subset=["subjects"]).drop_duplicates(["paper", "table"])
    return "; ".join(f"{row.paper}, Table {row.table}: {int(row.subjects)} subjects" for row in sizes.itertuples())
