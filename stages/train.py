"""DVC stage `train`: fine-tune one method on one subject's (augmented) training set."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dvclive import Live

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import DATASET
from dreamstudy.methods.run import train_run


def main(argv=None) -> None:
    args, p = stage_args("train", __doc__, argv)
    cell, layout = (args.method, args.label, args.subject), args.layout
    subject = load_dataset(DATASET).subjects[args.subject]
    with Live(str(layout.train_log(*cell)), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(step: int, loss: float) -> None:
            # Not next_step(): it rewrites metrics.json and, in a DVC repo, fsyncs a signal file every
            # step (~8 ms, a third of a tiny-model step); log_metric alone appends to loss.tsv.
            live.step = step
            live.log_metric("loss", loss)

        train_run(p, run=layout.run(*cell), method_name=args.method, subjects=[subject],
                  training_sets=[layout.augmented(args.label, args.subject)],
                  prior_sets=[layout.prior_set(args.method, args.subject)],
                  out_dir=layout.model(*cell), checkpoint_dir=layout.checkpoint(*cell), log=log)


if __name__ == "__main__":
    run_stage(main)
