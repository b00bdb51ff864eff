"""DVC stage `evaluate`: DINO, CLIP-I, CLIP-T, DIV, PRES and memorization of every image of a study's grid,
with bootstrap intervals and tests against `none` -> its metrics folder."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import stage_args
from dreamstudy.layout import CLASS_PRIORS, DATASET
from dreamstudy.metrics.study import evaluate_study, grid_runs, write_metrics


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv)
    metrics = evaluate_study(DATASET, args.layout.samples_root, grid_runs(p, args.study),
                             pretrained=p.eval.pretrained_encoders, batch_size=p.eval.batch_size, seed=p.seed,
                             memorization_threshold=p.eval.memorization_threshold, class_priors_dir=CLASS_PRIORS)
    write_metrics(args.layout.metrics, metrics)


if __name__ == "__main__":
    main()
