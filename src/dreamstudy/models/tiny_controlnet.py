"""ControlNets by name: a hub id or local folder, or a built-in model's name ("tiny", "sd15-random"): a
random-init ControlNet matching that built-in model.

A built-in ControlNet starts as ControlNet training does, from a copy of the UNet's encoder
(`ControlNetModel.from_unet`). Its zero convolutions are then re-initialised at random: left at zero,
the control image would change nothing, and a ControlNet that is never wired in would go unnoticed.
Like the tiny model, its images are noise: it tests the plumbing, not the method.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from huggingface_hub.errors import HFValidationError

from dreamstudy.models.loading import (
    RANDOM_MODELS,
    TINY,
    ModelLoadError,
    build_once,
    cache_dir,
    random_model_fingerprint,
    random_model_folder,
)
from dreamstudy.models.tiny import CONDITIONING_CHANNELS

TINY_CONTROLNET_SEED = 0
# Bump when build_tiny_controlnet changes in a way the fingerprint's recipe does not show.
TINY_CONTROLNET_BUILD_VERSION = 1


def build_tiny_controlnet(folder: str | Path, unet: UNet2DConditionModel, seed: int = TINY_CONTROLNET_SEED,
                          conditioning_channels: tuple[int, ...] = CONDITIONING_CHANNELS) -> None:
    """Save a ControlNet for `unet` (safetensors) into `folder`; the same unet and seed give the same bytes."""
    with torch.random.fork_rng(devices=[]):  # seed init, leave the caller's RNG state alone
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
        zero_convs = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                      controlnet.controlnet_mid_block]
        for conv in zero_convs:
            conv.reset_parameters()
    controlnet.save_pretrained(folder, safe_serialization=True)


def tiny_controlnet_fingerprint(name: str = TINY) -> str:
    """Hash of everything that decides a built-in ControlNet's bytes (its model's recipe included)."""
    recipe = {"build": TINY_CONTROLNET_BUILD_VERSION, "seed": TINY_CONTROLNET_SEED,
              "conditioning_channels": RANDOM_MODELS[name].CONDITIONING_CHANNELS, name: random_model_fingerprint(name)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def tiny_controlnet_folder(name: str = TINY) -> Path:
    """The ControlNet of built-in model `name` in the model cache, next to the model's, built on first use
    (and again when it does not match its manifest, as the model's folder)."""
    def build(tmp: Path) -> None:
        unet = UNet2DConditionModel.from_pretrained(random_model_folder(name), subfolder="unet", use_safetensors=True)
        build_tiny_controlnet(tmp, unet, conditioning_channels=RANDOM_MODELS[name].CONDITIONING_CHANNELS)
    return build_once(cache_dir() / f"{name}-controlnet-{tiny_controlnet_fingerprint(name)}", build)


def load_controlnet(name: str, *, torch_dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> ControlNetModel:
    """A ControlNet from a hub id or local folder, or the built-in one of a built-in model's name;
    ModelLoadError if it cannot be had."""
    source = str(tiny_controlnet_folder(name)) if name in RANDOM_MODELS else os.path.expanduser(name)
    try:
        controlnet = ControlNetModel.from_pretrained(source, dtype=torch_dtype, use_safetensors=True)
    except (OSError, HFValidationError) as err:
        if name in RANDOM_MODELS:  # built here, offline: no download or other setting gets it
            raise ModelLoadError(
                f"cannot load the built-in ControlNet of '{name}' from {source} ({type(err).__name__}: {err}).\n"
                "It is built here, offline: delete that folder and the next run builds it again."
            ) from err
        raise ModelLoadError(
            f"cannot load ControlNet weights '{name}' ({type(err).__name__}: {err}).\n"
            "To get them, do one of:\n"
            "  - connect to the internet: the first run downloads them into the Hugging Face cache;\n"
            "  - set HF_HOME to a Hugging Face cache that already holds them;\n"
            "  - use a local diffusers ControlNet folder (one with config.json and safetensors weights);\n"
            "  - or set `model.pretrained: tiny` (or sd15-random), which use a built-in offline random-init ControlNet."
        ) from err
    return controlnet.to(device)
