"""What paper/main.tex reads besides the tables and figures, written by the report stages: the numbers its
prose prints (numbers.tex beside each report's tables), so that text and tables never disagree, and the lists
of sample grids; and the `paper` stage's compile.

main.tex writes `\\result{main/best/dino}`; a key no report defined stops the compile instead of printing
nothing. Keys are paths, `{study}/{what}[/...]`; values are LaTeX text, numbers with the tables' 3 decimals.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dreamstudy.errors import StudyError
from dreamstudy.io import atomic_file, scratch_folder
from dreamstudy.layout import BASELINE
from dreamstudy.report.latex import MISSING, escape_latex, number
from dreamstudy.report.load import INTERVAL_METRICS, Results
from dreamstudy.report.tables import span

REAL_WEIGHTS = "Pretrained model and encoder weights; DreamBench's sampling protocol."  # when nothing is labelled
HEADER = ("% Written by the report stage from results/ (and params.yaml where it says so): the numbers of "
          "paper/main.tex's prose. Do not edit.\n")


def signed(value: float) -> str:
    """'$+0.012$' / '$-0.010$': a difference, with its sign in math mode (a minus, not a hyphen)."""
    return number(value) if pd.isna(value) else f"${value:+.3f}$"


def definitions(entries: dict[str, str]) -> str:
    r"""`\expandafter\def\csname result@KEY\endcsname{VALUE}` per entry: any characters may name a key."""
    lines = [rf"\expandafter\def\csname result@{key}\endcsname{{{value}}}" for key, value in entries.items()]
    return HEADER + "\n".join(lines) + "\n"


def best(means: pd.Series, lowest: bool = False):
    """(index label, mean) of the highest (`lowest`: lowest) mean, ties to the first; NaN never wins, and all
    NaN gives (None, NaN)."""
    means = means.dropna()
    if means.empty:
        return None, float("nan")
    label = means.idxmin() if lowest else means.idxmax()
    return label, means[label]


def run_name(run: tuple[str, str] | None) -> str:
    return MISSING if run is None else escape_latex(" / ".join(run))


def change_range(stats: pd.DataFrame, metrics: Iterable[str], key: str) -> dict[str, str]:
    """Per metric, the smallest and largest change of a run's mean against `none` of the same method
    (`{key}/change/{metric}/min|max`); -- without a baseline run to compare with."""
    means = stats.set_index(["method", "strategy", "metric"])["mean"]
    entries = {}
    for metric in metrics:
        changes = [means[(m, s, metric)] - means[(m, BASELINE, metric)]
                   for m, s, k in means.index if k == metric and s != BASELINE and (m, BASELINE, metric) in means]
        low, high = (min(changes), max(changes)) if changes else (float("nan"), float("nan"))
        entries |= {f"{key}/change/{metric}/min": signed(low), f"{key}/change/{metric}/max": signed(high)}
    return entries


def significance(tests: pd.DataFrame, key: str) -> dict[str, str]:
    """How many tests against `none` ran, and how many found a difference."""
    ran = tests[tests["p_value"].notna()]  # NaN: too few subjects or pairs to test
    return {f"{key}/tests": str(len(ran)), f"{key}/significant": str(int(ran["significant"].astype(bool).sum()))}


def write_numbers(entries: dict[str, str], path: Path) -> None:
    Path(path).write_text(definitions(entries))


def figure_list(figures: list[tuple[str, str]]) -> str:
    """A figure per (path relative to paper/, LaTeX caption), full text width, each on a page of floats."""
    return HEADER + "".join(rf"""\begin{{figure}}[p]
\centering
\includegraphics[width=\textwidth,height=0.85\textheight,keepaspectratio]{{{path}}}
\caption{{{caption}}}
\end{{figure}}
""" for path, caption in figures)


def study_numbers(results: Results, key: str) -> dict[str, str]:
    """What any single-concept study's text cites (main or ablation: `key`): its size, protocol and statistics,
    every run's mean of every metric with an interval, the best run of each, the changes against `none` and
    the tests."""
    image = results.per_image
    stats = results.stats.set_index(["method", "strategy", "metric"])["mean"]
    entries = {
        f"{key}/subjects": str(image["subject"].nunique()),
        f"{key}/prompts": span(image.groupby("subject")["prompt_index"].nunique()),
        f"{key}/images-per-prompt": span(image.groupby(["method", "strategy", "subject", "prompt_index"]).size()),
        f"{key}/images": str(len(image)),
        f"{key}/runs": str(len(results.runs)),
        f"{key}/models": escape_latex(", ".join(results.models)),
        f"{key}/sampling": escape_latex(" or ".join(f"{s}, {n} steps" for s, n in results.sampling)),
        f"{key}/encoders/dino": escape_latex(results.encoders.dino),
        f"{key}/encoders/clip": escape_latex(results.encoders.clip),
        f"{key}/encoders/lpips": escape_latex(results.encoders.lpips),
        f"{key}/ci": escape_latex(results.ci_label),
        f"{key}/alpha": "--" if results.alpha is None else f"{results.alpha:g}",
        f"{key}/memorization-threshold": f"{results.memorization_threshold:g}",
        f"{key}/labels": escape_latex(results.caption("").strip() or REAL_WEIGHTS),
    }
    entries |= {f"{key}/real/{metric.name}": number(results.real_images[metric.name].mean())
                for metric in INTERVAL_METRICS if metric.real_images}
    entries |= {f"{key}/{metric}/{method}/{strategy}": number(mean)
                for (method, strategy, metric), mean in stats.items()}
    for metric in INTERVAL_METRICS:
        means = stats.xs(metric.name, level="metric")
        run, value = best(means, lowest=metric.direction < 0)
        entries |= {f"{key}/best/{metric.name}": number(value), f"{key}/best/{metric.name}/run": run_name(run)}
    entries |= change_range(results.stats, [m.name for m in INTERVAL_METRICS], key)
    return entries | significance(results.tests, key)


INSTALL_HINT = ("`make install-latex` installs TeX Live (Debian's packages: the Makefile lists them), then `dvc repro "
                "paper`; or compile paper/ elsewhere (e.g. Overleaf): the report stages wrote everything it inputs")
OVERFULL_PT = 3.0  # an overfull box narrower than this is invisible in print
PROBLEMS = {  # what in a compile log makes the PDF wrong, though pdflatex finished
    "undefined reference": re.compile(r"LaTeX Warning: Reference `([^']+)' on page \d+ undefined"),
    "undefined citation": re.compile(r"(?:LaTeX|Package natbib) Warning: Citation `([^']+)' on page \d+ undefined"),
}
OVERFULL = re.compile(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)[^\n]*lines? (\d+(?:--\d+)?)")
OPENED = re.compile(r"\(\./([^\s()]+\.tex)")


class PaperError(StudyError):
    """The paper did not compile, or compiled with undefined references."""


def log_problems(log: str) -> list[str]:
    """Undefined references and citations in a LaTeX log."""
    return [f"{what} {name}" for what, pattern in PROBLEMS.items() for name in dict.fromkeys(pattern.findall(log))]


def overfull_boxes(log: str) -> list[tuple[float, str]]:
    """(points too wide, 'file, lines a--b') of every overfull hbox in a LaTeX log; the file is the last one the
    log shows opened before it."""
    boxes = []
    for match in OVERFULL.finditer(log):
        opened = OPENED.findall(log, 0, match.start())
        boxes.append((float(match.group(1)), f"{opened[-1] if opened else 'main.tex'}, lines {match.group(2)}"))
    return boxes


def compile_paper(paper_dir: Path, pdf: Path) -> list[tuple[float, str]]:
    """latexmk paper_dir/main.tex in a scratch folder, then paper_dir/main.pdf in place (a byte-identical PDF
    for the same inputs: no date, no random ID). Raises PaperError without LaTeX, on a LaTeX error (with the
    log's end) or on an undefined reference or citation; returns the overfull boxes wider than OVERFULL_PT."""
    latexmk = shutil.which("latexmk")
    if latexmk is None or shutil.which("pdflatex") is None:
        raise PaperError(f"{pdf}: LaTeX is not installed (no latexmk or pdflatex on PATH): {INSTALL_HINT}")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}
    with tempfile.TemporaryDirectory(prefix=".latexmk.", dir=scratch_folder(pdf)) as build:
        # no random /ID (pdfTeX derives it from the scratch folder's name): the same inputs, the same bytes
        done = subprocess.run([latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
                               r"-usepretex=\pdftrailerid{}", f"-outdir={build}", "main.tex"], cwd=paper_dir,
                              env=env, capture_output=True, text=True)
        log_path = Path(build) / "main.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else done.stdout + done.stderr
        if done.returncode:
            raise PaperError(f"{paper_dir / 'main.tex'}: latexmk failed (exit {done.returncode}); the log ends:\n"
                             f"{log[-3000:]}")
        problems = log_problems(log)
        if problems:
            raise PaperError(f"{paper_dir / 'main.tex'}: {'; '.join(problems)}")
        with atomic_file(pdf, "wb") as handle:
            handle.write((Path(build) / "main.pdf").read_bytes())
    return [(points, line) for points, line in overfull_boxes(log) if points > OVERFULL_PT]
