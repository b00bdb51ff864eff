"""The `paper` stage's compile (report/paper.py) on small documents: a missing LaTeX, a LaTeX error, an
undefined reference or generated number are named, and the PDF is byte-identical from the same inputs. The
study's own paper is compiled by the smoke DAG (test_dvc_e2e.py)."""

import shutil
from pathlib import Path

import pytest

from dreamstudy.report import paper
from dreamstudy.report.paper import PaperError, compile_paper, definitions, log_problems, overfull_boxes

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
