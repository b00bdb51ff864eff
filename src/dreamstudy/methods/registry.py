"""Personalization methods by name. A method says which parameters train, and how they are saved
and loaded; the one training loop (`trainer.py`) serves them all. A new method is one module that
calls `register` with a factory from the `train` params section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one method, from its params section."""

    lr: float
    steps: int
    batch_size: int


class Method(Protocol):
    def prepare(self, parts) -> list[torch.nn.Parameter]:
        """Freeze or adapt `parts` (models.loading.Components); return the parameters to train."""

    def save(self, parts, folder: Path) -> None:
        """Write the trained artefact (safetensors) into `folder`."""

    def load_into(self, pipe, folder: Path) -> None:
        """Apply an artefact written by `save` to a stock StableDiffusionPipeline."""


MethodFactory = Callable[[object], tuple[Method, Schedule]]
METHODS: dict[str, MethodFactory] = {}


def register(name: str) -> Callable[[MethodFactory], MethodFactory]:
    def add(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = factory
        return factory
    return add


def get_method(name: str, train_params) -> tuple[Method, Schedule]:
    try:
        factory = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}") from None
    return factory(train_params)
