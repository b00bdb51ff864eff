"""The base model, for strategies that generate (background scenes, img2img, ControlNet): loaded once
per process and shared, since `mix` may call several such strategies in one stage."""

from __future__ import annotations

import functools

import torch
from diffusers import StableDiffusionPipeline

from dreamstudy.models.loading import load_pipeline


@functools.cache
def base_pipeline(pretrained: str) -> StableDiffusionPipeline:
    pipe = load_pipeline(pretrained)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
