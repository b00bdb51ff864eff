"""What every stage CLI shares: `--params`, the grid item it works on, validation before any model loads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamstudy.params import ParamsError, Params, load_params

# grid item -> the params list it must belong to
ITEMS = {
    "subject": lambda p: p.data.subjects,
    "strategy": lambda p: p.aug.strategies,
    "method": lambda p: p.train.methods,
}


def stage_args(description: str, items: tuple[str, ...] = (), argv=None,
               paths: dict[str, str] | None = None) -> tuple[argparse.Namespace, Params]:
    """Parse the stage's arguments and params.yaml; exit with a message naming the bad key or item.

    `items` name the grid cell the stage works on (--subject ...); `paths` are folders with defaults.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for item in items:
        parser.add_argument(f"--{item}", required=True)
    for name, default in (paths or {}).items():
        parser.add_argument(f"--{name}", type=Path, default=Path(default), help=f"default: {default}")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        for item in items:
            valid = ITEMS[item](params)
            if getattr(args, item) not in valid:
                raise ParamsError(f"--{item} {getattr(args, item)!r} is not in {args.params}; valid: {valid}")
    except ParamsError as err:
        sys.exit(f"error: {err}")
    return args, params
