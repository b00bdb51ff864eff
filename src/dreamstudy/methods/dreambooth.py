"""DreamBooth: the whole UNet fine-tuned (diffusers' train_dreambooth.py), optionally the text encoder too.

Saved as diffusers model folders, unet/ (and text_encoder/), which stock diffusers loads with
`UNet2DConditionModel.from_pretrained(folder / "unet")` and passes to `StableDiffusionPipeline`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from dreamstudy.methods.registry import Schedule, register

UNET = "unet"
TEXT_ENCODER = "text_encoder"


def save_half(model: torch.nn.Module, folder: Path) -> None:
    """`model.save_pretrained` (safetensors) in float16, leaving `model` itself as it is.

    float16 halves the disk cost: a full UNet is 3.4 GB in float32, and the paper-scale study keeps 60 of
    them (30 subjects x 2 strategies). A copy is cast, so the caller's float32 weights are not rounded.
    """
    copy.deepcopy(model).half().save_pretrained(folder, safe_serialization=True)


@dataclass(frozen=True)
class DreamBooth:
    trains_text_encoder: bool = False

    def token(self, identifier: str) -> str:
        return identifier

    def check(self, tokenizer, token: str) -> None:
        pass  # any word will do: the identifier trains through the fine-tuned UNet (and text encoder)

    def prepare(self, parts, token: str, class_name: str) -> list[torch.nn.Parameter]:
        models = [parts.unet, parts.text_encoder] if self.trains_text_encoder else [parts.unet]
        for model in models:
            model.requires_grad_(True)
        return [p for model in models for p in model.parameters()]

    def after_step(self, parts) -> None:
        pass

    def save(self, parts, folder: Path) -> None:
        save_half(parts.unet, Path(folder) / UNET)
        if self.trains_text_encoder:
            save_half(parts.text_encoder, Path(folder) / TEXT_ENCODER)

    def load_into(self, pipe: StableDiffusionPipeline, folder: Path) -> None:
        # The artefact says what it holds: a text_encoder/ folder is there only when one was trained.
        folder = Path(folder)
        weights = dict(dtype=pipe.dtype, use_safetensors=True)
        pipe.unet = UNet2DConditionModel.from_pretrained(folder / UNET, **weights).to(pipe.device)
        if (folder / TEXT_ENCODER).is_dir():
            pipe.text_encoder = CLIPTextModel.from_pretrained(folder / TEXT_ENCODER, **weights).to(pipe.device)


@register("dreambooth")
def dreambooth_from_params(train_params) -> tuple[DreamBooth, Schedule]:
    p = train_params.dreambooth
    return DreamBooth(trains_text_encoder=p.train_text_encoder), Schedule.of(p)
