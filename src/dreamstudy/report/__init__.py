"""The report: figures and LaTeX tables of the study, made from results/ alone."""

from __future__ import annotations

from pathlib import Path

from dreamstudy.io import atomic_dir
from dreamstudy.report.figures import write_figures
from dreamstudy.report.load import Results, ResultsError, load_results
from dreamstudy.report.tables import write_tables

__all__ = ["Results", "ResultsError", "load_results", "write_report"]


def write_report(results: Results, out_dir: str | Path) -> list[Path]:
    """Replace `out_dir`/figures and `out_dir`/tables, each only once all of both are drawn.

    Returns the files written. Other files in `out_dir` (the paper itself) are left alone. Nothing is random:
    the confidence intervals come from the gather stage's stats.csv.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir / "tables") as tables_tmp, atomic_dir(out_dir / "figures") as figures_tmp:
        write_tables(results, tables_tmp)
        write_figures(results, figures_tmp)
    return sorted([*(out_dir / "tables").iterdir(), *(out_dir / "figures").iterdir()])
