"""DVC stage `class_priors`: "a photo of a {class}" images of every class in the study, for prior preservation."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import stage_args
from dreamstudy.layout import CLASS_PRIORS
from dreamstudy.sampling.priors import class_priors_from_params


def main(argv=None) -> None:
    _, p = stage_args(__doc__, argv=argv)
    class_priors_from_params(p, CLASS_PRIORS)


if __name__ == "__main__":
    main()
