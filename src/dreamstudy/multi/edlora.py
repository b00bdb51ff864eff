"""ED-LoRA's layer-wise embeddings (Mix-of-Show, Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
`mixofshow/models/edlora.py`, `mixofshow/pipelines/pipeline_edlora.py`), on a stock diffusers UNet and CLIP
text encoder. Our code, written from their description and source:

- A concept word `<c>` is never a token itself: it stands for N new tokens `<c>_0 ... <c>_{N-1}`, one per
  cross-attention layer of the UNet, ordered down -> mid -> up (MoS's `revise_edlora_unet_attention_forward`
  counts them in that order; SD 1.x has 16, our tiny model 4). Each has its own input-embedding row.
- A prompt is encoded N times, `<c>` replaced by `<c>_i` in copy i (MoS's `bind_concept_prompt`), into
  layer-wise text features [B, N, L, D].
- A wrapper around each attn2 processor gives layer i the slice [:, i] of 4-D encoder_hidden_states
  (MoS's `EDLoRA_AttnProcessor`); 3-D conditioning passes through unchanged, so one UNet serves both.

Left out here: MoS's LoRA (the study's own `methods.lora` adapters apply), its two-word concepts ("<c1> <c2>",
first word N(0, 0.013^2), second from the class word: two calls of `add_layerwise_token`), its training loop,
and its sampling pipeline (the stock StableDiffusionPipeline rejects 4-D prompt_embeds: sample through the
UNet directly, as `gradient_fusion.sample_run` does).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from diffusers.models.attention_processor import Attention

from dreamstudy.methods.tokens import add_token, class_embedding, ids
from dreamstudy.methods.trainer import tokenize
from dreamstudy.text import replace_identifier


def cross_attention_layers(unet) -> list[tuple[str, Attention]]:
    """The UNet's cross-attention layers (attn2) in MoS's order: down blocks, mid block, up blocks. (Module
    registration order is down, up, mid in diffusers' UNet2DConditionModel, hence the explicit order.)"""
    layers = []
    for part in ("down_blocks", "mid_block", "up_blocks"):
        block = getattr(unet, part, None)
        if block is None:
            continue
        layers += [(f"{part}.{name}", module) for name, module in block.named_modules()
                   if isinstance(module, Attention) and module.is_cross_attention]
    return layers


def layer_token(token: str, layer: int) -> str:
    return f"{token}_{layer}"


@dataclass(frozen=True)
class LayerwiseToken:
    """A concept word and its per-layer tokens: `tokens[i]` (id `ids[i]`) conditions cross-attention layer i."""

    token: str
    tokens: tuple[str, ...]
    ids: tuple[int, ...]

    def bind(self, prompt: str, layer: int) -> str:
        """`prompt` with the concept word replaced by layer `layer`'s token (as a whole word)."""
        return replace_identifier(prompt, self.token, self.tokens[layer])

    def embeddings(self, text_encoder) -> torch.Tensor:
        """The N learned rows, [N, D] (a view of the input-embedding matrix)."""
        return text_encoder.get_input_embeddings().weight[list(self.ids)]


def add_layerwise_token(tokenizer, text_encoder, token: str, num_layers: int,
                        init: str | torch.Tensor) -> LayerwiseToken:
    """Add `token`_0 ... `token`_{num_layers - 1} to the tokenizer and the text encoder's input embeddings.

    init: a class noun (every row starts at its embedding, `tokens.class_embedding`), a [D] vector (every
    row), or [num_layers, D] rows (a saved concept, `LayerwiseToken.embeddings`). ValueError, naming the
    token, if `token` or one of its layer tokens is already a word or token of the tokenizer: the concept
    word must stay a placeholder that only `bind` turns into tokens."""
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    if token in tokenizer.get_vocab() or len(ids(tokenizer, token)) == 1:
        raise ValueError(f"concept token {token!r} is already in the tokenizer's vocabulary; choose another")
    names = tuple(layer_token(token, i) for i in range(num_layers))
    taken = [name for name in names if name in tokenizer.get_vocab()]
    if taken:  # checked before anything is added, so a refusal leaves the tokenizer as it was
        raise ValueError(f"layer tokens {taken} of concept token {token!r} are already in the tokenizer's vocabulary")
    weight = text_encoder.get_input_embeddings().weight
    rows = class_embedding(tokenizer, weight, init) if isinstance(init, str) else init
    if rows.shape not in ((weight.shape[1],), (num_layers, weight.shape[1])):
        raise ValueError(f"init rows of concept token {token!r} must be [{weight.shape[1]}] or "
                         f"[{num_layers}, {weight.shape[1]}], got {tuple(rows.shape)}")
    rows = rows.detach().to(weight.device, weight.dtype).expand(num_layers, weight.shape[1]).clone()
    token_ids = tuple(add_token(tokenizer, name) for name in names)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[list(token_ids)] = rows
    return LayerwiseToken(token, names, token_ids)


def bind_prompts(prompts: Sequence[str], concepts: Sequence[LayerwiseToken], num_layers: int) -> list[list[str]]:
    """prompts[b] bound to layer i of every concept, as [layer][b]."""
    bound = []
    for i in range(num_layers):
        layer = []
        for prompt in prompts:
            for concept in concepts:
                prompt = concept.bind(prompt, i)
            layer.append(prompt)
        bound.append(layer)
    return bound


def encode_layerwise(tokenizer, text_encoder, prompts: Sequence[str], concepts: Sequence[LayerwiseToken],
                     num_layers: int) -> torch.Tensor:
    """Layer-wise text features [B, N, L, D] (L = the tokenizer's max length): [b, i] encodes prompts[b]
    with every concept word bound to its layer-i token. One text-encoder call over the B * N prompts."""
    flat = [p for layer in bind_prompts(prompts, concepts, num_layers) for p in layer]  # layer-major
    input_ids = tokenize(tokenizer, flat).to(text_encoder.device)
    features = text_encoder(input_ids)[0]  # [N * B, L, D]
    return features.unflatten(0, (num_layers, len(prompts))).transpose(0, 1)


class LayerwiseProcessor:
    """Wraps one cross-attention layer's processor: 4-D encoder_hidden_states [B, N, L, D] become layer
    `index`'s [B, L, D]; anything else passes through. Everything else is the wrapped processor's."""

    def __init__(self, index: int, processor):
        self.index = index
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None and encoder_hidden_states.ndim == 4:
            encoder_hidden_states = encoder_hidden_states[:, self.index]
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def install_layerwise(unet) -> int:
    """Wrap every cross-attention processor of `unet` (once); return N, the number of layers."""
    layers = cross_attention_layers(unet)
    for index, (_, attn) in enumerate(layers):
        if not isinstance(attn.processor, LayerwiseProcessor):
            attn.set_processor(LayerwiseProcessor(index, attn.processor))
    return len(layers)


def uninstall_layerwise(unet) -> None:
    for _, attn in cross_attention_layers(unet):
        if isinstance(attn.processor, LayerwiseProcessor):
            attn.set_processor(attn.processor.processor)


def is_layerwise(unet) -> bool:
    return all(isinstance(attn.processor, LayerwiseProcessor) for _, attn in cross_attention_layers(unet))


@contextlib.contextmanager
def layerwise(unet) -> Iterator[int]:
    """`install_layerwise` for the duration of a block (a UNet that had them keeps them); yields N."""
    installed = is_layerwise(unet)
    try:
        yield install_layerwise(unet)
    finally:
        if not installed:
            uninstall_layerwise(unet)
