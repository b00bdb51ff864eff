"""DVC stage `evaluate`: DINO, CLIP-I and CLIP-T of every image of the study's grid -> results/metrics/."""

import itertools

from dreamstudy.cli import stage_args
from dreamstudy.metrics.study import evaluate_study, write_metrics


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv, paths={"dataset": "data/dreambench", "samples": "results/samples",
                                                     "out": "results/metrics"})
    runs = list(itertools.product(p.train.methods, p.aug.strategies, p.data.subjects))
    metrics = evaluate_study(args.dataset, args.samples, runs, pretrained=p.eval.pretrained_encoders,
                             batch_size=p.eval.batch_size, seed=p.seed)
    write_metrics(args.out, metrics)


if __name__ == "__main__":
    main()
