"""DreamBooth-LoRA: low-rank adapters (peft) on the UNet's attention projections.

Same targets and initialisation as diffusers' train_dreambooth_lora.py; saved in the layout that
`StableDiffusionPipeline.load_lora_weights` reads.
"""

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


@dataclass(frozen=True)
class Lora:
    rank: int
    alpha: float
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def prepare(self, parts) -> list[torch.nn.Parameter]:
        parts.unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                                          target_modules=list(self.target_modules)))
        return [p for p in parts.unet.parameters() if p.requires_grad]

    def save(self, parts, folder: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.unet))
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=WEIGHTS,
                                                  safe_serialization=True)

    @staticmethod
    def load_into(pipe: StableDiffusionPipeline, folder: Path) -> None:
        pipe.load_lora_weights(folder, weight_name=WEIGHTS)


@register("lora")
def lora_from_params(train_params) -> tuple[Lora, Schedule]:
    p = train_params.lora
    return Lora(rank=p.rank, alpha=p.alpha), Schedule(lr=p.lr, steps=p.steps, batch_size=p.batch_size)
