"""Run a training script as `__main__` and record when each optimizer step ends.

    python bench/steptimer.py OUT.json SCRIPT [ARGS...]

The script runs unchanged (ours or diffusers' reference scripts alike): a global optimizer-step hook
(torch.optim.optimizer.register_optimizer_step_post_hook) notes the wall and CPU clocks after every
step, and OUT.json gets them when the script exits.
"""

import atexit
import json
import runpy
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

WALL: list[float] = []
CPU: list[float] = []


def note_step(optimizer, args, kwargs) -> None:
    # Wrappers (accelerate's AcceleratedOptimizer) subclass Optimizer too: count the torch optimizer only.
    if type(optimizer).__module__.startswith("torch.optim"):
        WALL.append(time.time())
        CPU.append(time.process_time())


def write(out: Path) -> None:
    out.write_text(json.dumps({"wall": WALL, "cpu": CPU, "torch_threads": torch.get_num_threads()}))


def main() -> None:
    out, script = Path(sys.argv[1]), sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` would have it
    register_optimizer_step_post_hook(note_step)
    atexit.register(write, out)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
