"""DVC stage `report`: figures (PDF + PNG) and LaTeX tables into paper/, from results/ alone."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.report import load_results, write_report
from dreamstudy.report.ablation import write_ablation_report


def main(argv=None) -> None:
    args, p = stage_args("report", __doc__, argv)
    layout = args.layout
    results = load_results(layout.results, memorization_threshold=p.eval.memorization_threshold)
    if args.study == "ablation":
        written = write_ablation_report(results, layout.paper)
    else:
        written = write_report(results, layout.paper)
    for path in written:
        print(path)


if __name__ == "__main__":
    run_stage(main)
