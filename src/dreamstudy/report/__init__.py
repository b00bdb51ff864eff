"""The report: figures and LaTeX tables of the study, made from results/ alone."""

from __future__ import annotations

from pathlib import Path

from dreamstudy.io import atomic_dir
from dreamstudy.report.figures import write_figures
from dreamstudy.report.latex import escape_latex
from dreamstudy.report.load import Results, ResultsError, load_results
from dreamstudy.report.paper import figure_list, study_numbers, write_numbers
from dreamstudy.report.tables import Settings, settings_table, write_tables

__all__ = ["Results", "ResultsError", "Settings", "load_results", "write_report"]


def write_report(results: Results, out_dir: str | Path, *, photos: dict[str, list[Path]],
                 settings: Settings) -> list[Path]:
    """Replace `out_dir`/figures and `out_dir`/tables, each only once all of both are drawn: the tables, the
    settings table and the numbers of the paper's text (tables/numbers.tex), the figures and the list of sample
    grids (figures/samples.tex); `photos`: each subject's training photos, first in its sample grid.

    Returns the files written. Other files in `out_dir` (the paper itself) are left alone. Nothing is random:
    the confidence intervals come from the gather stage's stats.csv.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir / "tables") as tables_tmp, atomic_dir(out_dir / "figures") as figures_tmp:
        write_tables(results, tables_tmp)
        (tables_tmp / "settings.tex").write_text(settings_table(results, settings))
        write_numbers(study_numbers(results, "main"), tables_tmp / "numbers.tex")
        write_figures(results, figures_tmp, photos)
        (figures_tmp / "samples.tex").write_text(figure_list([
            (f"figures/samples_{subject}.pdf", escape_latex(results.caption(
                f"Samples of {subject}: its training photos, then each method and strategy (rows) per prompt.")))
            for subject in results.subjects]))
    return sorted([*(out_dir / "tables").iterdir(), *(out_dir / "figures").iterdir()])
