"""Augmentation strategies by name. A new strategy is one module that calls `register`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Augmented:
    """One augmented training image; `tags` are words the caption gains (e.g. "zoomed in")."""

    image: Image.Image
    tags: tuple[str, ...] = field(default=())


# (original images, strength in [0, 1], images per original, seed) -> augmentations of each original
Strategy = Callable[[list[Image.Image], float, int, int], list[list[Augmented]]]

STRATEGIES: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def add(strategy: Strategy) -> Strategy:
        STRATEGIES[name] = strategy
        return strategy
    return add


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown augmentation strategy {name!r}; valid: {sorted(STRATEGIES)}") from None
