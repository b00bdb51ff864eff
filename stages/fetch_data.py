"""DVC stage `fetch_data`: DreamBench (all 30 subjects), verified and normalised, into data/dreambench/."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import stage_args
from dreamstudy.data.fetch import fetch_dreambench


def main(argv=None) -> None:
    args, p = stage_args(__doc__, argv=argv, paths={"out": "data/dreambench"})
    fetch_dreambench(p.data.source, args.out, image_size=p.data.image_size, local_path=p.data.local_path)


if __name__ == "__main__":
    main()
