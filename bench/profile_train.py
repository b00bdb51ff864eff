"""Where our `train` stage spends its time: imports (python -X importtime) and the run (cProfile).

    python bench/profile_train.py [--method lora] [--steps 200] [--top 25]

Runs `python stages/train.py` once under each, in the working folder bench/train_speed.py benches,
prints import time per package and the functions with the most self time, and keeps the raw files
(results/bench/train_importtime.txt, results/bench/train_<method>.prof, for `python -m pstats`).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from train_speed import REPO, STRATEGY, prepare

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)")


def import_seconds_by_package(importtime: str) -> Counter:
    """Self time of every imported module, summed per top-level package (these add up to the total)."""
    seconds: Counter = Counter()
    for match in filter(None, map(IMPORT_LINE.match, importtime.splitlines())):
        seconds[match[2].split(".")[0]] += int(match[1]) / 1e6
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="lora")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    stage = [str(REPO / "stages" / "train.py"), "--subject", args.subject, "--method", args.method,
             "--strategy", STRATEGY]
    profile = args.out / f"train_{args.method}.prof"
    root = Path(tempfile.mkdtemp(prefix="dreamstudy-profile-"))
    try:
        work, _, _ = prepare(root, args.subject, [args.method], 64, args.steps)
        imports = subprocess.run([sys.executable, "-X", "importtime", *stage], cwd=work, env=env, check=True,
                                 capture_output=True, text=True).stderr
        subprocess.run([sys.executable, "-m", "cProfile", "-o", profile, *stage], cwd=work, env=env, check=True,
                       capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    (args.out / "train_importtime.txt").write_text(imports)
    by_package = import_seconds_by_package(imports)
    print(f"imports: {sum(by_package.values()):.2f} s (-X importtime inflates it), by package:")
    for package, seconds in by_package.most_common(args.top):
        print(f"{seconds:7.2f}  {package}")
    # self time: where the CPU goes (the UNet's kernels, the optimizer, unmarshalling imported modules...)
    pstats.Stats(str(profile)).sort_stats("tottime").print_stats(args.top)
    print(f"wrote {args.out / 'train_importtime.txt'} and {profile}")


if __name__ == "__main__":
    main()
