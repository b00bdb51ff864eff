"""DreamBooth-LoRA: low-rank adapters (peft) on the UNet's attention projections, optionally on the
text encoder's too. Same targets and initialisation as diffusers' train_dreambooth_lora.py; saved in
the layout that `StableDiffusionPipeline.load_lora_weights` reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from dreamstudy.methods.registry import PlainText, Schedule, register

WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"  # the name add_adapter gives the one adapter


def adapter_config(model) -> dict:
    """The peft config (rank, alpha, targets) of `model`'s adapter, its target set sorted: a set would be
    written in the order of this process's string hashes."""
    config = model.peft_config[ADAPTER].to_dict()
    return config | {"target_modules": sorted(config["target_modules"])}


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, so that its bytes are reproducible
    (DVC, resumed runs): safetensors writes them in a random order (safetensors#584)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # padded to 8 bytes, as safetensors pads it
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


@dataclass(frozen=True)
class Lora(PlainText):
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

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter]:
        parts.unet.add_adapter(self.config(UNET_TARGETS))
        if self.trains_text_encoder:
            parts.text_encoder.add_adapter(self.config(TEXT_ENCODER_TARGETS))
        models = (parts.unet, parts.text_encoder)
        return [p for model in models for p in model.parameters() if p.requires_grad]

    def after_step(self, parts) -> None:
        pass

    def save(self, parts, folder: Path) -> None:
        # With each adapter its peft config (rank, alpha, targets): without it load_lora_weights takes
        # alpha = rank, which rescales every update by rank / alpha (train_dreambooth_lora.py saves it too).
        models = {"unet": parts.unet} | ({"text_encoder": parts.text_encoder} if self.trains_text_encoder else {})
        adapters = {}
        for name, model in models.items():
            adapters[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
            adapters[f"{name}_lora_adapter_metadata"] = adapter_config(model)
        StableDiffusionPipeline.save_lora_weights(folder, **adapters, weight_name=WEIGHTS, safe_serialization=True)
        sort_metadata(Path(folder) / WEIGHTS)

    def load_into(self, pipe: StableDiffusionPipeline, folder: Path) -> None:
        pipe.load_lora_weights(folder, weight_name=WEIGHTS)


@register("lora")
def lora_from_params(train_params) -> tuple[Lora, Schedule]:
    p = train_params.lora
    return Lora(rank=p.rank, alpha=p.alpha, trains_text_encoder=p.train_text_encoder), Schedule.of(p)
