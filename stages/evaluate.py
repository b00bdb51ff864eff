"""DVC stage `evaluate`: DINO, CLIP-I, CLIP-T, DIV, PRES and closeness to the training photos of one run's
samples (one subject from one fine-tuned model) -> its score folder, results/scores/{method}/{strategy}/{subject}."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.layout import DATASET
from dreamstudy.metrics.run import evaluate_run
from dreamstudy.metrics.scores import write_scores


def main(argv=None) -> None:
    args, p = stage_args("evaluate", __doc__, argv)
    run = (args.method, args.label, args.subject)
    scores = evaluate_run(DATASET, args.layout.samples(*run), args.layout.class_priors(args.subject), run,
                          pretrained=p.eval.pretrained_encoders, batch_size=p.eval.batch_size, seed=p.seed)
    write_scores(args.layout.scores(*run), scores)


if __name__ == "__main__":
    run_stage(main)
