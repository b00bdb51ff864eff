"""DVC stage `report`: figures (PDF + PNG) and LaTeX tables into paper/, from results/ alone."""

from dreamstudy.cli import stage_args
from dreamstudy.report import load_results, write_report
from dreamstudy.report.ablation import write_ablation_report


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv)
    layout = args.layout
    write = write_ablation_report if args.study == "ablation" else write_report
    for path in write(load_results(layout.results), layout.paper, seed=p.seed):
        print(path)


if __name__ == "__main__":
    main()
