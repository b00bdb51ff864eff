"""DVC stage `train_multi`: one pair's joint model (a `*_joint` variant), its method trained on both subjects'
original images at once, each with its own identifier and class images."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dvclive import Live

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import BASELINE, DATASET, Layout, key_subjects
from dreamstudy.methods.run import train_run
from dreamstudy.params import JOINT_METHOD


def main(argv=None) -> None:
    args, p = stage_args("train_multi", __doc__, argv)
    cell, layout, main_study = (args.variant, BASELINE, args.pair), args.layout, Layout("main")
    method = JOINT_METHOD[args.variant]
    dataset = load_dataset(DATASET)
    subjects = [dataset.subjects[name] for name in key_subjects(args.pair)]
    with Live(str(layout.train_log(*cell)), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(step: int, loss: float) -> None:
            live.step = step  # as stages/train.py
            live.log_metric("loss", loss)

        train_run(p, run=layout.run(*cell), method_name=method, subjects=subjects,
                  training_sets=[main_study.augmented(BASELINE, s.name) for s in subjects],
                  prior_sets=[main_study.prior_set(method, s.name) for s in subjects],
                  out_dir=layout.model(*cell), checkpoint_dir=layout.checkpoint(*cell), log=log)


if __name__ == "__main__":
    run_stage(main)
