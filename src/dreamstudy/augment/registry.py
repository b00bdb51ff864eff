"""Augmentation strategies by name. A new strategy is one module that calls `register`.

A strategy maps a subject's original images to augmentations of each, deterministically from
`Context.seed`, and must give back the originals unchanged at strength 0 (each module's docstring
says what strength means for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Augmented:
    """One augmented training image.

    `tags` are words the caption gains (e.g. "zoomed in"); `mask` ("L", same size as the image, 255 =
    counts) marks the pixels the diffusion loss sees, None = all of them. `subject_mask` ("L", 255 =
    subject) is where a strategy found the subject, saved for inspection only (the loss ignores it).
    """

    image: Image.Image
    tags: tuple[str, ...] = field(default=())
    mask: Image.Image | None = None
    subject_mask: Image.Image | None = None


@dataclass(frozen=True)
class Context:
    """What a strategy may use besides the images."""

    strength: float                  # aug.strength in [0, 1]
    num_per_image: int               # augmentations per original
    seed: int                        # derived for this subject and strategy
    class_name: str = ""             # DreamBench class noun, e.g. "dog"
    pretrained: str = "tiny"         # base model, for generative strategies
    resolution: int = 512            # generation resolution, for generative strategies
    mix: dict[str, float] = field(default_factory=dict)  # strategy -> weight, for `mix`


Strategy = Callable[[list[Image.Image], Context], list[list[Augmented]]]

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
