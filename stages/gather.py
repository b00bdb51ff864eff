"""DVC stage `gather`: every grid run's score folder -> the study's metrics folder (per-image, per-prompt and
per-subject tables, bootstrap intervals, tests against `none`, summary.json and headline.json). Loads no model."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.grid import runs
from dreamstudy.metrics.study import gather, read_study_scores, write_metrics


def main(argv=None) -> None:
    args, p = stage_args("gather", __doc__, argv)
    scores = read_study_scores(args.layout, runs(p, args.study))
    metrics = gather(scores, seed=p.seed, memorization_threshold=p.eval.memorization_threshold,
                     bootstrap_samples=p.eval.bootstrap_samples, confidence=p.eval.confidence, alpha=p.eval.alpha,
                     study=args.study)
    write_metrics(args.layout.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
