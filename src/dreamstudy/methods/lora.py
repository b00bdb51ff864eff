"""DreamBooth-LoRA: low-rank adapters (peft) on the UNet's attention projections, optionally on the
text encoder's too. Same targets and initialisation as diffusers' train_dreambooth_lora.py; saved in
the layout that `StableDiffusionPipeline.load_lora_weights` reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from dreamstudy.methods.registry import Schedule, register

WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class Lora:
    rank: int
    alpha: float
    trains_text_encoder: bool = False

    def token(self, identifier: str) -> str:
        return identifier

    def check(self, tokenizer, token: str) -> None:
        pass  # any word will do: the identifier trains through the adapters

    def config(self, targets: tuple[str, ...]) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                          target_modules=list(targets))

    def prepare(self, parts, token: str, class_name: str) -> list[torch.nn.Parameter]:
        parts.unet.add_adapter(self.config(UNET_TARGETS))
        if self.trains_text_encoder:
            parts.text_encoder.add_adapter(self.config(TEXT_ENCODER_TARGETS))
        models = (parts.unet, parts.text_encoder)
        return [p for model in models for p in model.parameters() if p.requires_grad]

    def after_step(self, parts) -> None:
        pass

    def save(self, parts, folder: Path) -> None:
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.unet))}
        if self.trains_text_encoder:
            layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(parts.text_encoder))
        StableDiffusionPipeline.save_lora_weights(folder, **layers, weight_name=WEIGHTS, safe_serialization=True)

    def load_into(self, pipe: StableDiffusionPipeline, folder: Path) -> None:
        pipe.load_lora_weights(folder, weight_name=WEIGHTS)


@register("lora")
def lora_from_params(train_params) -> tuple[Lora, Schedule]:
    p = train_params.lora
    return Lora(rank=p.rank, alpha=p.alpha, trains_text_encoder=p.train_text_encoder), Schedule.of(p)
