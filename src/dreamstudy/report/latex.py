"""Booktabs LaTeX: long tables from a DataFrame (`long_table`, across pages) or tables from blocks of
preformatted rows separated by midrules (`booktabs`: ours, real images, published), and the cell formats they
share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}  # < and > would print as ¡ and ¿ in OT1
MISSING = "--"  # a cell the schema allows to be NaN, or a number a published row does not report
DIGITS = 3


def escape_latex(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in str(text))


def number(value: float) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{DIGITS}f}"


def estimate(mean: float, low: float, high: float, marked: bool = False) -> str:
    """'$0.535^{+0.012}_{-0.010}$': the mean with its CI as offsets (bootstrap CIs need not be symmetric),
    then '*' when `marked` (significant against the baseline)."""
    if math.isnan(mean):
        return MISSING
    cell = number(mean) if math.isnan(low) or math.isnan(high) else \
        f"${mean:.{DIGITS}f}^{{+{high - mean:.{DIGITS}f}}}_{{-{mean - low:.{DIGITS}f}}}$"
    return cell + ("*" if marked else "")


@dataclass(frozen=True)
class Block:
    """Rows of LaTeX cells, under an optional italic title row spanning the table."""

    rows: list[list[str]]
    title: str | None = None


def booktabs(header: list[str], align: str, blocks: list[Block], caption: str, label: str) -> str:
    """A booktabs table whose non-empty blocks are separated by midrules. Cells are LaTeX already; header,
    titles and caption are plain text, escaped here."""
    lines = [r"\begin{table}", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",  # 6 columns of CIs fit
             rf"\caption{{{escape_latex(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(map(escape_latex, header)) + r" \\"]
    for block in (b for b in blocks if b.rows):
        lines.append(r"\midrule")
        if block.title:
            lines.append(rf"\multicolumn{{{len(header)}}}{{l}}{{\emph{{{escape_latex(block.title)}}}}} \\")
        lines += [" & ".join(row) + r" \\" for row in block.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def long_table(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs longtable (it breaks across pages, its header repeated): text left-aligned, numbers
    right-aligned with 3 decimals, LaTeX specials escaped."""
    alignment = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in table.dtypes)
    styler = (table.style.hide(axis="index")
              .format(precision=DIGITS, escape="latex", na_rep=MISSING)
              .format_index(escape="latex", axis="columns"))
    return styler.to_latex(column_format=alignment, hrules=True, environment="longtable",
                           caption=escape_latex(caption), label=label)
