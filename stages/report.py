"""Report stage: paper/figures (PDF + PNG) and paper/tables (LaTeX) from results/ alone."""

from __future__ import annotations

import argparse

from dreamstudy.params import load_params
from dreamstudy.report import load_results, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="study parameters (the bootstrap seed)")
    parser.add_argument("--results", default="results", help="folder written by the sample and evaluate stages")
    parser.add_argument("--out", default="paper", help="folder that receives figures/ and tables/")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    results = load_results(args.results)
    for path in write_report(results, args.out, seed=params.seed):
        print(path)


if __name__ == "__main__":
    main()
