"""What the strategies that generate (background scenes, img2img, ControlNet) share: the base model, loaded
once per process and shared, since `mix` may call several such strategies in one stage; seeded generators;
and, for the two that re-render the originals (img2img, ControlNet), their context prompts and framing."""

from __future__ import annotations

import functools
from importlib.resources import files

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageOps

from dreamstudy.augment.registry import GRADED, Context
from dreamstudy.models.loading import load_pipeline
from dreamstudy.seeding import derive_seed

GENERATIVE = (*GRADED, "model.pretrained", "model.resolution")  # what a strategy that draws images reads


def context_prompts() -> list[str]:
    """The committed context prompts, each with a {class} slot."""
    text = files("dreamstudy.augment").joinpath("prompts/contexts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def draw_prompts(ctx: Context, strategy: str, index: int) -> list[str]:
    """`ctx.num_per_image` context prompts for original `index`, distinct while the list lasts."""
    contexts = context_prompts()
    rng = np.random.default_rng(derive_seed(ctx.seed, strategy, "contexts", index))
    picks = rng.choice(len(contexts), size=ctx.num_per_image, replace=ctx.num_per_image > len(contexts))
    return [contexts[i].format(**{"class": ctx.class_name}) for i in picks]


def generators(ctx: Context, strategy: str, index: int) -> list:
    """One generator per augmentation of original `index`: its pixels depend on nothing else."""
    return [generator(derive_seed(ctx.seed, strategy, index, k)) for k in range(ctx.num_per_image)]


def fit(image: Image.Image, resolution: int) -> Image.Image:
    """Resize and centre-crop to the generation resolution, as the trainer does."""
    return ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)


@functools.cache
def base_pipeline(pretrained: str) -> StableDiffusionPipeline:
    pipe = load_pipeline(pretrained)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
