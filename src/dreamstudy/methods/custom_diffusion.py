"""Custom Diffusion (Kumari et al., CVPR 2023): the UNet's cross-attention key and value projections
(attn2.to_k, attn2.to_v) train together with a new token's embedding (one per concept where concepts train
jointly), initialised and kept as in Textual Inversion. As diffusers'
examples/custom_diffusion/train_custom_diffusion.py with `--freeze_model crossattn_kv`.

Training uses diffusers' CustomDiffusionAttnProcessor2_0 on each cross-attention layer: a trainable
copy of to_k/to_v, with the first (start-of-text) position's keys and values detached, as in the
paper's code. Saving does not use `unet.save_attn_procs`: in diffusers 0.42.1 its safetensors file does
not load back into a stock pipeline (safetensors drops the self-attention layers' empty entries, so
`load_attn_procs` builds too few processors; and without its private `_pipeline` argument it installs
none, silently: diffusers#4634, #9320). At inference a K/V-only processor computes exactly what the
default processor computes with the trained weights in to_k/to_v, so those weights are saved under the
UNet's own parameter names, full weights as in the paper's code:

    custom_diffusion_kv.safetensors  {"<attention layer>.to_k.weight": [inner, cross], ".to_v.weight": ...}
    learned_embeds.safetensors       {"<token>": [1, D]}  (Textual Inversion's file; for concepts trained
                                                          jointly one a token, learned_embeds_<i>.safetensors)

`load_into` applies both to any stock pipeline (`unet.load_state_dict(..., strict=False)`,
`load_textual_inversion`), whatever its attention backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file, save_file

from dreamstudy.methods.registry import Schedule, register
from dreamstudy.methods.tokens import NewToken

KV = "custom_diffusion_kv.safetensors"


def kv_processors(unet) -> dict:
    """Every attention layer's processor: a trainable K/V copy for cross-attention, the current one elsewhere."""
    processors = {}
    for name, current in unet.attn_processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if not attn.is_cross_attention:
            processors[name] = current
            continue
        processor = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False,
                                                    hidden_size=attn.to_k.out_features,
                                                    cross_attention_dim=attn.to_k.in_features)
        processor.load_state_dict({"to_k_custom_diffusion.weight": attn.to_k.weight,
                                   "to_v_custom_diffusion.weight": attn.to_v.weight})
        processors[name] = processor.to(attn.to_k.weight.device)
    return processors


def trained_kv(unet) -> dict[str, torch.Tensor]:
    """The trained K/V weights under the names of the UNet parameters they replace."""
    weights = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, CustomDiffusionAttnProcessor2_0):
            layer = name.removesuffix(".processor")
            weights[f"{layer}.to_k.weight"] = processor.to_k_custom_diffusion.weight
            weights[f"{layer}.to_v.weight"] = processor.to_v_custom_diffusion.weight
    return {key: value.detach().cpu().contiguous() for key, value in weights.items()}


class CustomDiffusion(NewToken):
    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter]:
        embedding = super().prepare(parts, tokens, class_names)
        parts.unet.set_attn_processor(kv_processors(parts.unet))
        return [p for p in parts.unet.parameters() if p.requires_grad] + embedding

    def save(self, parts, folder: Path) -> None:
        super().save(parts, folder)
        save_file(trained_kv(parts.unet), Path(folder) / KV, metadata={"format": "pt"})

    def load_into(self, pipe, folder: Path) -> None:
        super().load_into(pipe, folder)
        path = Path(folder) / KV
        unexpected = pipe.unet.load_state_dict(load_file(path), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{path}: {len(unexpected)} weights match no UNet parameter, e.g. {unexpected[0]!r}; "
                             "was it trained on another model.pretrained?")


@register("custom_diffusion")
def custom_diffusion_from_params(train_params) -> tuple[CustomDiffusion, Schedule]:
    return CustomDiffusion(), Schedule.of(train_params.custom_diffusion)
