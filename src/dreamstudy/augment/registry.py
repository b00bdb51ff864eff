"""Augmentation strategies by name. A new strategy is one module that calls `register`, plus its line in
MODULES: a stage imports the module of its own strategy only, so that its code dependencies are exactly
that module and the shared ones (dreamstudy.dag).

A strategy maps a subject's original images to augmentations of each, deterministically from
`Context.seed`, and must give back the originals unchanged at strength 0 (each module's docstring
says what strength means for it). It declares the params.yaml keys it reads besides aug.strength and
its subject's identifier: the stage fills only those fields of its Context (the others stay None).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from dreamstudy.layout import BASELINE
from dreamstudy.params import BackgroundParams, ControlNetParams, GenerationParams
from dreamstudy.seeding import derive_seed

MODULES = {name: f"dreamstudy.augment.{name}" for name in
           ("none", "classic", "scale", "background", "img2img", "controlnet", "specialist", "mix")}


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
    """What a strategy may use besides the images; None where the strategy declares no use of it."""

    strength: float | None = None            # aug.strength in [0, 1]
    num_per_image: int | None = None         # augmentations per original
    seed: int | None = None                  # derived for this subject and strategy
    class_name: str = ""                     # DreamBench class noun, e.g. "dog"
    pretrained: str | None = None            # base model, for generative strategies
    resolution: int | None = None            # generation resolution, for generative strategies
    mix: dict[str, float] | None = None      # strategy -> weight, for `mix`
    # the strategies' own settings: params.yaml's aug.img2img, aug.controlnet, aug.background
    img2img: GenerationParams | None = None
    controlnet: ControlNetParams | None = None
    background: BackgroundParams | None = None


# Context fields that come from params.yaml, by key
PARAM_FIELDS = {"num_per_image": "aug.num_per_image", "pretrained": "model.pretrained",
                "resolution": "model.resolution", "mix": "aug.mix", "img2img": "aug.img2img",
                "controlnet": "aug.controlnet", "background": "aug.background"}

Strategy = Callable[[list[Image.Image], Context], list[list[Augmented]]]
Reads = Sequence[str] | Callable[[object], list[str]]  # keys, or params -> keys

GRADED = ("seed", "aug.num_per_image")  # what every strategy but `none` reads

STRATEGIES: dict[str, tuple[Strategy, Reads]] = {}


def register(name: str, reads: Reads = ()) -> Callable[[Strategy], Strategy]:
    """Make `strategy` available as `name`; `reads`: the params.yaml keys it reads (see the module docstring)."""
    def add(strategy: Strategy) -> Strategy:
        STRATEGIES[name] = (strategy, reads)
        return strategy
    return add


def strategy_module(name: str):
    try:
        return importlib.import_module(MODULES[name])
    except KeyError:
        raise ValueError(f"unknown augmentation strategy {name!r}; valid: {sorted(MODULES)}") from None


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        strategy_module(name)
    return STRATEGIES[name][0]


def strategy_reads(name: str, params) -> list[str]:
    """The params.yaml keys strategy `name` reads (besides aug.strength and its subject's identifier)."""
    get_strategy(name)
    reads = STRATEGIES[name][1]
    return list(reads(params) if callable(reads) else reads)


def strategy_context(name: str, params, *, subject: str, class_name: str, strength: float | None) -> Context:
    """The Context of strategy `name` on `subject`, with the params fields it reads; `strength` is the
    ablation cell's, else aug.strength (which `none` does not read)."""
    keys = strategy_reads(name, params)

    def value(key: str):
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        return node

    fields = {field: value(key) for field, key in PARAM_FIELDS.items()
              if any(k == key or k.startswith(f"{key}.") for k in keys)}
    if strength is None and name != BASELINE:
        strength = params.aug.strength
    seed = derive_seed(params.seed, "augment", subject, name) if "seed" in keys else None
    return Context(strength=strength, seed=seed, class_name=class_name, **fields)
