"""DVC stage `evaluate`: DINO, CLIP-I and CLIP-T of every image of a study's grid -> its metrics folder."""

from dreamstudy.cli import stage_args
from dreamstudy.layout import DATASET
from dreamstudy.metrics.study import evaluate_study, grid_runs, write_metrics


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv)
    metrics = evaluate_study(DATASET, args.layout.samples_root, grid_runs(p, args.study),
                             pretrained=p.eval.pretrained_encoders, batch_size=p.eval.batch_size, seed=p.seed)
    write_metrics(args.layout.metrics, metrics)


if __name__ == "__main__":
    main()
