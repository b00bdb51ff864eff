"""ED-LoRA, Mix-of-Show's single-concept method (Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
`mixofshow/models/edlora.py`): a concept word `<c>` stands for one new token per cross-attention layer of the
UNet (`multi.edlora`: layer-wise embeddings), trained with LoRA on the text encoder's and the UNet's attention.
Mix-of-Show's settings are the defaults of params' `train.edlora`: rank 4 with no 1/r scaling (peft's alpha =
rank), learning rates 1e-4 for the UNet's LoRA, 1e-5 for the text encoder's, 1e-3 for the embeddings.
Differences: one concept word initialised from the class noun (MoS: two words, a random one and the class
noun's), and the study's one trainer and captions.

Saved as LoRA's `pytorch_lora_weights.safetensors` (what `load_lora_weights` reads) and the layer tokens' rows
in edlora_embeddings.safetensors ({"<c>_i": [D]}). A gradient-fused model of several concepts (Mix-of-Show's
fusion, `multi.mix_of_show`) keeps the embeddings file beside fused_weights.safetensors, the fused layers'
full weights. Either needs the project's processors to sample (README, "Loading the models"):

    pipe = StableDiffusionPipeline.from_pretrained("runwayml/stable-diffusion-v1-5")
    get_method("edlora", params.train)[0].load_into(pipe, "models/edlora/none/dog")
    image = pipe("a <mth> dog on the beach").images[0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from dreamstudy.methods.lora import WEIGHTS, Lora
from dreamstudy.methods.registry import Schedule, register
from dreamstudy.methods.tokens import LearnedTokens, check_token, placeholder
from dreamstudy.multi.edlora import (
    LayerwiseToken,
    add_layerwise_token,
    add_saved_concepts,
    concept_rows,
    encode_ids,
    install_layerwise,
    layer_token,
    layerwise_ids,
    layerwise_pipeline,
)

EMBEDDINGS = "edlora_embeddings.safetensors"
FUSED = "fused_weights.safetensors"  # a fused model's layers: {"unet.<layer>.weight": W, "text_encoder....": W}


@dataclass
class EdLora:
    rank: int
    text_encoder_lr: float
    embedding_lr: float
    trains_text_encoder = True  # its LoRA and the embeddings: captions are encoded every step
    concepts: list[LayerwiseToken] = field(default_factory=list, init=False)  # set by prepare
    learned: LearnedTokens | None = field(default=None, init=False)

    @property
    def lora(self) -> Lora:
        return Lora(rank=self.rank, alpha=float(self.rank), trains_text_encoder=True)  # MoS: no 1/r

    def token(self, identifier: str) -> str:
        return placeholder(identifier)

    def check(self, tokenizer, token: str) -> None:
        check_token(tokenizer, token)  # the concept word stays a placeholder
        check_token(tokenizer, layer_token(token, 0))  # its layer tokens are new tokens

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[dict]:
        unet_lora = [p for p in self.lora.prepare(parts, tokens, class_names) if p.requires_grad]
        text_ids = {id(p) for p in parts.text_encoder.parameters()}
        text_lora = [p for p in unet_lora if id(p) in text_ids]
        unet_lora = [p for p in unet_lora if id(p) not in text_ids]
        num_layers = install_layerwise(parts.unet, parts.tokenizer.model_max_length)
        self.concepts = [add_layerwise_token(parts.tokenizer, parts.text_encoder, token, num_layers, class_name)
                         for token, class_name in zip(tokens, class_names, strict=True)]
        self.learned = LearnedTokens.track(parts, [t for c in self.concepts for t in c.tokens],
                                           [i for c in self.concepts for i in c.ids])
        return [{"params": [LearnedTokens.weight(parts)], "lr": self.embedding_lr},
                {"params": text_lora, "lr": self.text_encoder_lr},
                {"params": unet_lora}]  # the schedule's lr

    def input_ids(self, tokenizer, captions: Sequence[str]) -> torch.Tensor:
        return layerwise_ids(tokenizer, captions, self.concepts, self.num_layers)

    def encode_text(self, text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
        return encode_ids(text_encoder, input_ids, self.num_layers)

    @property
    def num_layers(self) -> int:
        return len(self.concepts[0].tokens)

    def after_step(self, parts) -> None:
        self.learned.restore(parts)

    def save(self, parts, folder: Path) -> None:
        self.lora.save(parts, folder)
        save_file(concept_rows(parts.text_encoder, self.concepts), Path(folder) / EMBEDDINGS,
                  metadata={"format": "pt"})

    def load_into(self, pipe: StableDiffusionPipeline, folder: Path) -> None:
        """A trained ED-LoRA (its LoRA through `load_lora_weights`) or a fused model (its layers' weights), then
        the concepts, and `pipe` made layer-wise (`multi.edlora.layerwise_pipeline`)."""
        folder = Path(folder)
        if (folder / FUSED).is_file():
            load_fused(pipe, folder / FUSED)
        else:
            pipe.load_lora_weights(folder, weight_name=WEIGHTS)
        path = folder / EMBEDDINGS
        concepts = add_saved_concepts(pipe.tokenizer, pipe.text_encoder, load_file(path), str(path))
        layers = layerwise_pipeline(pipe, concepts)
        if any(len(c.tokens) != layers for c in concepts):
            raise ValueError(f"{path}: its concepts have {sorted({len(c.tokens) for c in concepts})} layer tokens, "
                             f"this pipeline's UNet {layers} cross-attention layers (another model.pretrained?)")


def load_fused(pipe: StableDiffusionPipeline, path: Path) -> None:
    """Write a fused model's layer weights into `pipe`'s UNet and text encoder (in their dtype and device)."""
    weights = load_file(path)
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    by_part: dict[str, dict[str, torch.Tensor]] = {name: {} for name in parts}
    for key, value in weights.items():
        part, _, name = key.partition(".")
        if part not in parts:
            raise ValueError(f"{path}: key {key!r} names neither the unet nor the text_encoder")
        by_part[part][name] = value
    for part, state in by_part.items():
        own = parts[part].state_dict()
        bad = [name for name, value in state.items() if name not in own or own[name].shape != value.shape]
        if bad:
            raise ValueError(f"{path}: {part}.{bad[0]} matches no weight of this pipeline's {part} "
                             "(fused from another model.pretrained?)")
        parts[part].load_state_dict(state, strict=False)


@register("edlora")
def edlora_from_params(train_params) -> tuple[EdLora, Schedule]:
    p = train_params.edlora
    return EdLora(rank=p.rank, text_encoder_lr=p.text_encoder_lr, embedding_lr=p.embedding_lr), Schedule.of(p)
