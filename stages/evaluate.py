"""Stage evaluate: DINO, CLIP-I and CLIP-T of every sampled image -> results/metrics/."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamstudy.metrics.study import evaluate_study, write_metrics
from dreamstudy.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="study parameters (eval section)")
    parser.add_argument("--dataset", type=Path, default=Path("data/dreambench"), help="fetch_data output")
    parser.add_argument("--samples", type=Path, default=Path("results/samples"), help="sample stage outputs")
    parser.add_argument("--out", type=Path, default=Path("results/metrics"), help="metrics folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    metrics = evaluate_study(args.dataset, args.samples, pretrained=params.eval.pretrained_encoders,
                             batch_size=params.eval.batch_size, seed=params.seed)
    write_metrics(args.out, metrics)


if __name__ == "__main__":
    main()
