"""DVC stage `fetch_data`: DreamBench (all 30 subjects), verified and normalised, into data/dreambench/."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

from dreamstudy.cli import run_stage, stage_args
from dreamstudy.data.fetch import fetch_dreambench


def main(argv=None) -> None:
    args, p = stage_args("fetch_data", __doc__, argv, paths={"out": "data/dreambench"})
    local_path = p.data.local_path if p.data.source == "local" else None
    fetch_dreambench(p.data.source, args.out, image_size=p.data.image_size, local_path=local_path)


if __name__ == "__main__":
    run_stage(main)
