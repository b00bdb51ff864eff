"""DVC stage `prior_set`: which class images one method trains with on one subject (none without prior
preservation), and their loss weight."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.trainset import write_prior_set


def main(argv=None) -> None:
    args, p = stage_args("prior_set", __doc__, argv)
    uses_priors = getattr(p.train, args.method).prior_preservation
    if uses_priors:
        write_prior_set(args.layout.prior_set(args.method, args.subject), args.layout.class_priors(args.subject),
                        p.priors.weight)
    else:
        write_prior_set(args.layout.prior_set(args.method, args.subject), None)


if __name__ == "__main__":
    run_stage(main)
