"""DVC stage `augment`: one subject's training set under one augmentation strategy, and its contact sheet."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.augment import augment_subject, strategy_context
from dreamstudy.augment.dataset import instance_caption
from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.dataset import load_dataset
from dreamstudy.layout import DATASET


def main(argv=None) -> None:
    args, p = stage_args("augment", __doc__, argv)
    subject = load_dataset(DATASET).subjects[args.subject]
    context = strategy_context(args.strategy, p, subject=args.subject, class_name=subject.class_name,
                               strength=args.strength)
    augment_subject(subject.images, strategy=args.strategy, context=context,
                    caption=instance_caption(p.train.identifiers[args.subject], subject.class_name),
                    out_dir=args.layout.augmented(args.label, args.subject),
                    contact_sheet=args.layout.contact_sheet(args.label, args.subject))


if __name__ == "__main__":
    run_stage(main)
