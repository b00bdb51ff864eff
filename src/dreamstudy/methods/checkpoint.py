"""Training checkpoints: trainable weights and optimizer state as safetensors, the rest as JSON.

No pickle: the optimizer's tensors are flattened into the safetensors file, its plain values (and
the LR scheduler's) into state.json. A checkpoint is written whole (atomic rename) and resumed only
by the run it belongs to (same fingerprint).
"""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from dreamstudy.io import atomic_dir

TENSORS = "state.safetensors"
STATE = "state.json"


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
    state_file = checkpointing.folder / STATE
    if not state_file.is_file():
        return 0, []
    meta = json.loads(state_file.read_text())
    if meta["fingerprint"] != checkpointing.fingerprint:
        clear(checkpointing)  # another run's state: start afresh
        return 0, []
    tensors = load_file(checkpointing.folder / TENSORS)
    with torch.no_grad():
        for i, p in enumerate(trainable):
            p.copy_(tensors[f"param.{i}"])
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


def clear(checkpointing) -> None:
    shutil.rmtree(checkpointing.folder, ignore_errors=True)
