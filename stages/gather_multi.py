"""DVC stage `gather_multi`: every multi-concept run's scores -> results/multi/metrics (per-image and per-prompt
tables, each variant's means over pairs with bootstrap intervals, tests against joint training, retention,
summary.json and headline.json). Loads no model."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.grid import runs
from dreamstudy.metrics.multi_study import (
    multi_stats,
    multi_tests,
    read_retention,
    read_scores,
    retention_stats,
    write_multi_metrics,
)


def main(argv=None) -> None:
    args, p = stage_args("gather_multi", __doc__, argv)
    folders = [args.layout.scores(*run) for run in runs(p, args.study)]
    per_image, per_prompt, encoders = read_scores(folders)
    baseline = f"{p.multi.joint[0]}_joint" if p.multi.joint else None  # the first of joint training's variants
    retention = retention_stats(read_retention(folders), p.seed, p.eval.bootstrap_samples, p.eval.confidence,
                                p.eval.alpha)
    write_multi_metrics(args.layout.metrics, per_image, per_prompt,
                        multi_stats(per_prompt, p.seed, p.eval.bootstrap_samples, p.eval.confidence),
                        multi_tests(per_prompt, baseline, p.eval.alpha), retention, encoders)


if __name__ == "__main__":
    run_stage(main)
