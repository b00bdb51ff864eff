"""DVC stage `paper`: paper/main.pdf, compiled by latexmk from paper/main.tex and what the report stages wrote
into paper/ (tables, figures, the numbers of the text)."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.report.paper import OVERFULL_PT, compile_paper


def main(argv=None) -> None:
    args, _ = stage_args("paper", __doc__, argv)
    paper = args.layout.paper
    for points, where in compile_paper(paper, paper / "main.pdf"):
        print(f"warning: {paper / 'main.tex'}: a box {points:g} pt wider than the text (> {OVERFULL_PT:g} pt) in "
              f"{where}")
    print(paper / "main.pdf")


if __name__ == "__main__":
    run_stage(main)
