"""Training checkpoints: trainable weights and optimizer state as safetensors, the rest as JSON.

No pickle: the optimizer's tensors are flattened into the safetensors file, its plain values (and
the LR scheduler's) into state.json. A checkpoint is written whole (atomic rename) and resumed only
by the run it belongs to (same fingerprint). One that cannot be read (a file truncated or damaged after it was
written: a full disk, a copy cut short) is said so and set aside, and the run starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dreamstudy.io import atomic_dir

TENSORS = "state.safetensors"
STATE = "state.json"
META = {"fingerprint", "step", "losses", "param_groups", "optimizer_plain", "lr_scheduler", "torch_rng"}


def save(checkpointing, step: int, trainable, optimizer, lr_scheduler, losses: list[float]) -> None:
    optimizer_state = optimizer.state_dict()
    tensors = {f"param.{i}": p.detach().contiguous() for i, p in enumerate(trainable)}
    plain = {}
    stored = set()
    for index, state in optimizer_state["state"].items():
        for key, value in flatten(state):
            if torch.is_tensor(value):
                # safetensors refuses shared memory, and bitsandbytes shares its quantisation maps
                shared = value.data_ptr() in stored
                stored.add(value.data_ptr())
                tensors[f"optim.{index}.{key}"] = value.clone() if shared else value.contiguous()
            else:
                plain[f"{index}.{key}"] = value
    meta = {"fingerprint": checkpointing.fingerprint, "step": step, "losses": losses,
            "param_groups": optimizer_state["param_groups"], "optimizer_plain": plain,
            "lr_scheduler": lr_scheduler.state_dict(), "torch_rng": torch.get_rng_state().tolist()}
    with atomic_dir(checkpointing.folder) as tmp:
        save_file(tensors, tmp / TENSORS)
        (tmp / STATE).write_text(json.dumps(meta))


def flatten(state: dict, prefix: str = ""):
    """(dotted key, value) of a nested optimizer state: bitsandbytes keeps its 8-bit moments in a sub-dict."""
    for key, value in state.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def resume(checkpointing, trainable, optimizer, lr_scheduler) -> tuple[int, list[float]]:
    """Load the run's checkpoint if there is one; return (step to start from, losses logged so far)."""
    folder = checkpointing.folder
    if not folder.exists():
        return 0, []
    try:
        meta = json.loads((folder / STATE).read_text())
        if not isinstance(meta, dict) or not META <= meta.keys():
            raise ValueError(f"not the fields {sorted(META)}")
    except (OSError, ValueError) as err:  # ValueError: also JSONDecodeError, UnicodeDecodeError
        return set_aside(folder, folder / STATE, err)
    if meta["fingerprint"] != checkpointing.fingerprint:
        clear(checkpointing)
        print(f"checkpoint {folder} is another run's (its settings or inputs changed): discarded, "
              "training starts from step 0", file=sys.stderr)
        return 0, []
    # all read and checked before anything changes: a failure here leaves the run as it would start afresh
    try:
        tensors = load_file(folder / TENSORS)
        params = [tensors[f"param.{i}"] for i in range(len(trainable))]
        if any(t.shape != p.shape for t, p in zip(params, trainable)):
            raise ValueError("a trained tensor's shape differs from the model's")
    except (OSError, SafetensorError, KeyError, ValueError) as err:
        return set_aside(folder, folder / TENSORS, err)
    with torch.no_grad():
        for p, value in zip(trainable, params):
            p.copy_(value)
    state: dict[int, dict] = {}
    optimizer_tensors = [(key.removeprefix("optim."), value) for key, value in tensors.items()
                         if key.startswith("optim.")]
    for key, value in optimizer_tensors + list(meta["optimizer_plain"].items()):
        index, *path, name = key.split(".")
        node = state.setdefault(int(index), {})
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    lr_scheduler.load_state_dict(meta["lr_scheduler"])
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    return meta["step"], meta["losses"]


def set_aside(folder: Path, unreadable: Path, err: Exception) -> tuple[int, list[float]]:
    """Rename a checkpoint that cannot be read out of the next one's way, to `<folder>.corrupt-<n>`, saying so
    in one line; return where training starts (step 0: only the latest checkpoint is kept)."""
    n = 1
    while (aside := folder.with_name(f"{folder.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(folder, aside)
    reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line, whatever the error's text
    print(f"checkpoint {unreadable} cannot be read ({reason}): set aside as {aside}, training starts from "
          "step 0 (no earlier checkpoint is kept)", file=sys.stderr)
    return 0, []


def clear(checkpointing) -> None:
    shutil.rmtree(checkpointing.folder, ignore_errors=True)
