"""DVC stage `stage_inputs`: for every kind of stage and grid item, the params values and code files its
outputs depend on (dreamstudy.dag), one small JSON file each in build/stage_inputs/."""

import gc

gc.disable()  # while the stage imports: see dreamstudy.cli.stage_args

import argparse

from dreamstudy.cli import run_stage
from dreamstudy.dag import INPUTS, stage_inputs
from dreamstudy.io import atomic_dir, write_json
from dreamstudy.params import load_params


def main(argv=None) -> None:
    gc.freeze()
    gc.enable()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    files = stage_inputs(load_params(args.params))
    with atomic_dir(INPUTS) as tmp:
        for path, record in files.items():
            write_json(tmp / path.relative_to(INPUTS), record)


if __name__ == "__main__":
    run_stage(main)
