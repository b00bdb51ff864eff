"""DVC stage `class_priors`: "a photo of a {class}" images of one subject's class, for prior preservation and PRES."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.sampling.priors import class_priors_from_params


def main(argv=None) -> None:
    args, p = stage_args("class_priors", __doc__, argv)
    class_priors_from_params(p, args.subject, args.layout.class_priors(args.subject))


if __name__ == "__main__":
    run_stage(main)
