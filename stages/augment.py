"""DVC stage `augment`: one subject's training set under one augmentation strategy, and its contact sheet."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.augment import Context, augment_subject
from dreamstudy.augment.dataset import instance_caption
from dreamstudy.cli import stage_args
from dreamstudy.data.fetch import load_dataset
from dreamstudy.layout import DATASET
from dreamstudy.seeding import derive_seed


def main(argv=None) -> None:
    args, p = stage_args(__doc__, ("subject", "strategy"), argv)
    subject = load_dataset(DATASET).subjects[args.subject]
    context = Context(strength=args.strength, num_per_image=p.aug.num_per_image,
                      seed=derive_seed(p.seed, "augment", args.subject, args.strategy),
                      class_name=subject.class_name, pretrained=p.model.pretrained,
                      resolution=p.model.resolution, mix=p.aug.mix)
    augment_subject(subject.images, strategy=args.strategy, context=context,
                    caption=instance_caption(p.train.identifier, subject.class_name),
                    out_dir=args.layout.augmented(args.label, args.subject),
                    contact_sheet=args.layout.contact_sheet(args.label, args.subject))


if __name__ == "__main__":
    main()
