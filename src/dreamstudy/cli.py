"""What every stage CLI shares: `--params`, the study and grid cell it works on, validation of both before
any model loads, and the view of params that the stage may read (dreamstudy.dag)."""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from dreamstudy.dag import KINDS, ParamsView, view
from dreamstudy.errors import StudyError
from dreamstudy.grid import AXES
from dreamstudy.layout import BASELINE, Layout, key_subjects, strategy_label
from dreamstudy.params import ParamsError, load_params


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`: an expected failure (dreamstudy.errors.StudyError: params, data, models, a run
    that diverged) is one `error:` line on stderr and exit status 1; a bug keeps its traceback."""
    try:
        main()
    except StudyError as err:
        sys.exit(f"error: {err}")


def stage_args(kind: str, description: str, argv=None,
               paths: dict[str, str] | None = None) -> tuple[argparse.Namespace, ParamsView]:
    """Parse the arguments of a `kind` stage (dreamstudy.dag.KINDS) and params.yaml; exit with a message naming
    the bad key or item.

    The whole of params.yaml is validated, but the stage gets a view of the keys it declares only. Its grid
    cell (--subject ...) is the kind's; `paths` are folders with defaults. With `--study ablation` the cell
    comes from the `ablation` section and takes a `--strength`, except for its baseline (`none`, the original
    images, trained once per subject); the result carries `layout` (where to read and write), `strength`
    (the ablation cell's aug.strength, else None) and `label` (the strategy's folder name, with its strength
    in the ablation).

    Every stage script turns the garbage collector off before its imports: torch, diffusers and
    transformers allocate hundreds of thousands of objects while importing, and the collector's passes
    over them make those imports ~20% slower (~0.9 s of a train stage's ~5 s start-up on this CPU; one
    process per subject, method and strategy). Here, after the imports, what they left is frozen (later
    passes skip it) and the collector is back on for the stage's work.
    """
    gc.freeze()
    gc.enable()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--study", choices=KINDS[kind].studies, default=KINDS[kind].studies[0],
                        help="the study whose grid cell this is")
    parser.add_argument("--strength", type=float, help="the ablation cell's aug.strength (--study ablation)")
    items = KINDS[kind].cell
    for item in items:
        parser.add_argument(f"--{item}", required=True)
    for name, default in (paths or {}).items():
        parser.add_argument(f"--{name}", type=Path, default=Path(default), help=f"default: {default}")
    args = parser.parse_args(argv)
    # At exit the collector skips what is alive then (torch, diffusers, transformers: thousands of objects
    # that finalization would walk, ~1.2 s per stage process); the stage's outputs are written by then.
    atexit.register(gc.freeze)
    try:
        params = load_params(args.params)
        graded = args.study == "ablation" and "strategy" in items and args.strategy != BASELINE
        if not graded and args.strength is not None:
            raise ParamsError(f"--strength is for the ablation's augmentation strategies only ({BASELINE!r}, "
                              "the main study and whole-study stages take none)")
        for item in [*items, "strength"] if graded else items:
            value, valid = getattr(args, item), AXES[args.study][item](params)
            if item == KINDS[kind].by and KINDS[kind].items is not None:  # e.g. train_multi: joint variants only
                valid = [v for v in valid if v in KINDS[kind].items]
            if value not in valid:
                raise ParamsError(f"--{item} {value!r} is not in the {args.study} grid of {args.params} for "
                                  f"stages/{kind}.py; valid: {valid}")
    except ParamsError as err:
        sys.exit(f"error: {err}")
    args.layout = Layout(args.study)
    if "strategy" in items:
        args.label = strategy_label(args.strategy, args.strength)
    by = KINDS[kind].by
    subjects = [args.subject] if "subject" in items else key_subjects(args.pair) if "pair" in items else []
    return args, view(params, args.study, kind, getattr(args, by) if by else None, subjects)
