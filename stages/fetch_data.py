"""Stage fetch_data: DreamBench (all 30 subjects), verified and normalised, into data/dreambench/."""

from __future__ import annotations

import argparse

from dreamstudy.data.fetch import fetch_dreambench
from dreamstudy.params import load_params

OUT_DIR = "data/dreambench"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (schema: dreamstudy.params)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    fetch_dreambench(params.data.source, OUT_DIR, image_size=params.data.image_size,
                     local_path=params.data.local_path)


if __name__ == "__main__":
    main()
