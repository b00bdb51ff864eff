"""DVC stage `report`: paper/figures (PDF + PNG) and paper/tables (LaTeX) from results/ alone."""

from dreamstudy.cli import stage_args
from dreamstudy.report import load_results, write_report


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv, paths={"results": "results", "out": "paper"})
    for path in write_report(load_results(args.results), args.out, seed=p.seed):
        print(path)


if __name__ == "__main__":
    main()
