"""The `paper` stage's compile (report/paper.py) on small documents: a missing LaTeX, a LaTeX error, an
undefined reference or generated number are named, and the PDF is byte-identical from the same inputs. The
study's own paper is compiled by the smoke DAG (test_dvc_e2e.py)."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dreamstudy.metrics.multi_study import RETAINED
from dreamstudy.metrics.registry import MULTI_METRICS
from dreamstudy.multi.variants import SAMPLE_LABELS
from dreamstudy.params import TextualInversionParams
from dreamstudy.report import Settings, paper, write_report
from dreamstudy.report.ablation import write_ablation_report
from dreamstudy.report.load import RANDOM_INIT_LABEL
from dreamstudy.report.multi import PROMPT, crops_latex, retention_latex, table_latex
from dreamstudy.report.paper import PaperError, compile_paper, definitions, log_problems, overfull_boxes
from tests.test_report import load, make_results, photos

MAIN_TEX = Path(__file__).resolve().parents[1] / "paper" / "main.tex"
needs_latex = pytest.mark.skipif(not (shutil.which("latexmk") and shutil.which("pdflatex")),
                                 reason="LaTeX is not installed (make install-latex)")


def result_macro() -> str:
    """main.tex's \\result, as it defines it."""
    text = MAIN_TEX.read_text()
    return text[text.index(r"\makeatletter"):text.index(r"\makeatother") + len(r"\makeatother")]


def document(tmp_path: Path, body: str, numbers: dict[str, str]) -> Path:
    (tmp_path / "numbers.tex").write_text(definitions(numbers))
    (tmp_path / "main.tex").write_text("\\documentclass{article}\n" + result_macro() + "\n\\input{numbers}\n"
                                       f"\\begin{{document}}\n{body}\n\\end{{document}}\n")
    return tmp_path


def test_without_latex_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(paper.shutil, "which", lambda name: None)
    with pytest.raises(PaperError, match="LaTeX is not installed.*make install-latex"):
        compile_paper(tmp_path, tmp_path / "main.pdf")
    assert not (tmp_path / "main.pdf").exists()


def test_the_log_names_undefined_references_citations_and_wide_boxes():
    log = ("(./tables/main.tex\nOverfull \\hbox (27.592pt too wide) in paragraph at lines 5--34\n)\n"
           "LaTeX Warning: Reference `tab:main' on page 2 undefined on input line 80.\n"
           "Package natbib Warning: Citation `ruiz2023' on page 1 undefined on input line 12.\n")
    assert log_problems(log) == ["undefined reference tab:main", "undefined citation ruiz2023"]
    assert overfull_boxes(log) == [(27.592, "tables/main.tex, lines 5--34")]


@needs_latex
def test_a_generated_number_prints_and_a_missing_one_stops_the_compile(tmp_path):
    folder = document(tmp_path, r"DINO \result{main/best/dino} of \result{main/best/dino/run}.",
                      {"main/best/dino": "0.635", "main/best/dino/run": "lora / classic"})
    compile_paper(folder, folder / "main.pdf")
    first = (folder / "main.pdf").read_bytes()
    compile_paper(folder, folder / "main.pdf")
    assert (folder / "main.pdf").read_bytes() == first  # no date, no random ID
    (folder / "main.tex").write_text((folder / "main.tex").read_text().replace("main/best/dino}", "main/best/clip}"))
    with pytest.raises(PaperError, match=r"(?s)latexmk failed.*No generated number `main/best/clip'"):
        compile_paper(folder, folder / "main.pdf")
    assert (folder / "main.pdf").read_bytes() == first  # the last good PDF stays


@needs_latex
def test_an_undefined_reference_fails_the_stage(tmp_path):
    folder = document(tmp_path, r"See Table~\ref{tab:nowhere}.", {})
    with pytest.raises(PaperError, match="undefined reference tab:nowhere"):
        compile_paper(folder, folder / "main.pdf")
    assert not (folder / "main.pdf").exists()


def multi_frames(variants: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """stats, tests and retention of the multi-concept study with the widest cells: negative means with their
    intervals, every one marked significant."""
    stats = pd.DataFrame([{"variant": v, "metric": m.name, "mean": -0.123, "ci_low": -0.2, "ci_high": -0.05,
                           "confidence": 0.95, "n_pairs": 12} for v in variants for m in MULTI_METRICS])
    tests = stats[["variant", "metric"]].assign(baseline=variants[0], alpha=0.05, significant=True)
    retention = pd.DataFrame([{"variant": v, "metric": m.name, "mean": -0.123, "single": -0.123, "mean_diff": -0.123,
                               "ci_low": -0.2, "ci_high": -0.05, "significant": True, "confidence": 0.95,
                               "alpha": 0.05} for v in variants for m in RETAINED])
    return stats, tests, retention


@needs_latex
def test_every_table_fits_the_text_width_with_the_paper_scale_names(tmp_path):
    """The paper-scale grid's longest names (textual_inversion, controlnet, the multi-concept variants with
    regions) and the widest cells: no table is wider than the text. Per-subject results are a long table."""
    paper = tmp_path / "paper"
    results = load(make_results(tmp_path / "results", strategies=["none", "controlnet"], method="textual_inversion"))
    settings = Settings({"textual_inversion": TextualInversionParams(lr=2e-3, steps=3000, batch_size=4)}, 200, 1.0,
                        0.5)
    write_report(results, paper, photos=photos(results), settings=settings)
    ablation = load(make_results(tmp_path / "ablation", method="textual_inversion",
                                 strategies=["none", "controlnet@0.75", "background@0.25", "specialist@1.0"]))
    write_ablation_report(ablation, paper / "ablation")
    variants = list(SAMPLE_LABELS)
    stats, tests, retention = multi_frames(variants)
    (paper / "multi").mkdir()
    for name, text in {"table": table_latex(stats, tests, [RANDOM_INIT_LABEL]),
                       "prompt": table_latex(stats, tests, [RANDOM_INIT_LABEL], PROMPT),
                       "crops": crops_latex(stats, tests, "OWLv2 base/16 (random init), 960 px", [RANDOM_INIT_LABEL]),
                       "retention": retention_latex(retention, [RANDOM_INIT_LABEL])}.items():
        (paper / "multi" / f"{name}.tex").write_text(text)
    tables = ["tables/main", "tables/overfitting", "tables/breakdown", "tables/settings", "tables/per_subject",
              "ablation/ablation", "multi/table", "multi/prompt", "multi/crops", "multi/retention"]
    preamble = MAIN_TEX.read_text().split(r"\input{tables/numbers}")[0]
    (paper / "main.tex").write_text(preamble + "\\begin{document}\n" + "".join(rf"\input{{{t}}}\clearpage" + "\n"
                                                                                for t in tables)
                                    + "\\bibliographystyle{plainnat}\n\\bibliography{references}\n\\end{document}\n")
    shutil.copy(MAIN_TEX.with_name("references.bib"), paper)
    assert compile_paper(paper, paper / "main.pdf") == []  # no box wider than the text by more than a few points
