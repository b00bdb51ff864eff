"""ED-LoRA's layer-wise embeddings (Mix-of-Show, Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
`mixofshow/models/edlora.py`, `mixofshow/pipelines/pipeline_edlora.py`), on a stock diffusers UNet and CLIP
text encoder. Our code, written from their description and source:

- A concept word `<c>` is never a token itself: it stands for N new tokens `<c>_0 ... <c>_{N-1}`, one per
  cross-attention layer of the UNet, ordered down -> mid -> up (MoS's `revise_edlora_unet_attention_forward`
  counts them in that order; SD 1.x has 16, our tiny model 4). Each has its own input-embedding row.
- A prompt is encoded N times, `<c>` replaced by `<c>_i` in copy i (MoS's `bind_concept_prompt`), into
  layer-wise text features, laid end to end along the token axis: [B, N * L, D] (MoS stacks them, [B, N, L, D];
  flat, they pass through a stock pipeline's `encode_prompt`, classifier-free guidance and `prompt_embeds`).
- A wrapper around each attn2 processor gives layer i its slice [:, i * L : (i + 1) * L] of conditioning N * L
  tokens long (MoS's `EDLoRA_AttnProcessor`); any other conditioning passes through unchanged, so one UNet
  serves both.

- A stock `StableDiffusionPipeline` samples with layer-wise concepts once `layerwise_pipeline` has wrapped its
  processors and its `encode_prompt` (which then encodes each prompt N times, bound to each layer).

Left out here: MoS's LoRA (the study's own `methods.lora` adapters apply, `methods.edlora`), its two-word
concepts ("<c1> <c2>", first word N(0, 0.013^2), second from the class word: two calls of
`add_layerwise_token`), and its training loop (the study's one trainer).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from diffusers.models.attention_processor import Attention

from dreamstudy.methods.registry import tokenize
from dreamstudy.methods.tokens import add_token, class_embedding, ids
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


def layerwise_ids(tokenizer, prompts: Sequence[str], concepts: Sequence[LayerwiseToken], num_layers: int
                   ) -> torch.Tensor:
    """Token ids [B, N * L] (L = the tokenizer's max length): row b is prompts[b] bound to layer 0, then to
    layer 1, ..., each padded to L, as `encode_ids` reads them."""
    bound = bind_prompts(prompts, concepts, num_layers)  # [layer][b]
    return torch.cat([tokenize(tokenizer, layer) for layer in bound], dim=1)


def encode_ids(text_encoder, input_ids: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Layer-wise text features [B, N * L, D] of `layerwise_ids`: every layer's copy encoded on its own, in one
    text-encoder call over the B * N copies."""
    copies = input_ids.unflatten(1, (num_layers, -1))  # [B, N, L]
    features = text_encoder(copies.flatten(0, 1))[0]  # [B * N, L, D]
    return features.unflatten(0, copies.shape[:2]).flatten(1, 2)


def encode_layerwise(tokenizer, text_encoder, prompts: Sequence[str], concepts: Sequence[LayerwiseToken],
                     num_layers: int) -> torch.Tensor:
    """Layer-wise text features [B, N * L, D]: [b, i * L : (i + 1) * L] encodes prompts[b] with every concept
    word bound to its layer-i token."""
    input_ids = layerwise_ids(tokenizer, prompts, concepts, num_layers).to(text_encoder.device)
    return encode_ids(text_encoder, input_ids, num_layers)


class LayerwiseProcessor:
    """Wraps one cross-attention layer's processor: conditioning of N * L tokens becomes layer `index`'s L;
    any other passes through. Everything else is the wrapped processor's."""

    def __init__(self, index: int, num_layers: int, tokens: int, processor):
        self.index, self.num_layers, self.tokens = index, num_layers, tokens
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None and encoder_hidden_states.shape[1] == self.num_layers * self.tokens:
            start = self.index * self.tokens
            encoder_hidden_states = encoder_hidden_states[:, start : start + self.tokens]
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def install_layerwise(unet, tokens: int) -> int:
    """Wrap every cross-attention processor of `unet` (once) for conditioning of `tokens` (the tokenizer's max
    length) per layer; return N, the number of layers."""
    layers = cross_attention_layers(unet)
    for index, (_, attn) in enumerate(layers):
        if not isinstance(attn.processor, LayerwiseProcessor):
            attn.set_processor(LayerwiseProcessor(index, len(layers), tokens, attn.processor))
    return len(layers)


def uninstall_layerwise(unet) -> None:
    for _, attn in cross_attention_layers(unet):
        if isinstance(attn.processor, LayerwiseProcessor):
            attn.set_processor(attn.processor.processor)


def is_layerwise(unet) -> bool:
    return all(isinstance(attn.processor, LayerwiseProcessor) for _, attn in cross_attention_layers(unet))


@contextlib.contextmanager
def layerwise(unet, tokens: int) -> Iterator[int]:
    """`install_layerwise` for the duration of a block (a UNet that had them keeps them); yields N."""
    installed = is_layerwise(unet)
    try:
        yield install_layerwise(unet, tokens)
    finally:
        if not installed:
            uninstall_layerwise(unet)


def layerwise_pipeline(pipe, concepts: Sequence[LayerwiseToken]) -> int:
    """Make a stock `StableDiffusionPipeline` sample with layer-wise `concepts` (installed in its tokenizer and
    text encoder): its UNet's cross-attention processors wrapped, and its `encode_prompt` replaced, on this
    instance, by one that calls the stock method once per layer with every concept word bound to that layer's
    token and lays the N results end to end, [B, N * L, D], the negative prompt's likewise. LoRA scale, clip
    skip and `prompt_embeds` given by the caller (already layer-wise) work as in the stock method; so does
    `multi.regions` (its region prompts go through the same `encode_prompt`). Returns N."""
    num_layers = install_layerwise(pipe.unet, pipe.tokenizer.model_max_length)
    stock = type(pipe).encode_prompt.__get__(pipe)

    def encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, **kwargs):
        if prompt_embeds is not None:
            return stock(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                         prompt_embeds, negative_prompt_embeds, **kwargs)
        single = isinstance(prompt, str)  # the stock method wants the negative prompt of the prompt's type
        layers = [stock(bound[0] if single else bound, device, num_images_per_prompt, do_classifier_free_guidance,
                        negative_prompt, negative_prompt_embeds=negative_prompt_embeds, **kwargs)
                  for bound in bind_prompts([prompt] if single else prompt, concepts, num_layers)]
        positive = torch.cat([embeds for embeds, _ in layers], dim=1)
        negative = torch.cat([embeds for _, embeds in layers], dim=1) if do_classifier_free_guidance else None
        return positive, negative

    pipe.encode_prompt = encode_prompt
    return num_layers


def concept_rows(text_encoder, concepts: Sequence[LayerwiseToken]) -> dict[str, torch.Tensor]:
    """Every layer token's row, {"<c>_i": [D]}, on the CPU: what `add_saved_concepts` reads back."""
    return {token: row.detach().cpu().contiguous() for concept in concepts
            for token, row in zip(concept.tokens, concept.embeddings(text_encoder))}


def add_saved_concepts(tokenizer, text_encoder, rows: dict[str, torch.Tensor], where: str) -> list[LayerwiseToken]:
    """Install the concepts of `concept_rows` output (read from `where`, named in errors): each concept word
    `<c>` from its rows `<c>_0 ... <c>_{N-1}`. ValueError if a concept's layers are not 0 .. N-1."""
    layers: dict[str, dict[int, torch.Tensor]] = {}
    for key, row in rows.items():
        word, _, index = key.rpartition("_")
        if not word or not index.isdigit():
            raise ValueError(f"{where}: key {key!r} is no layer token '<concept>_<layer>'")
        layers.setdefault(word, {})[int(index)] = row
    concepts = []
    for word, by_layer in layers.items():
        if sorted(by_layer) != list(range(len(by_layer))):
            raise ValueError(f"{where}: concept {word!r} has layers {sorted(by_layer)}, expected 0 .. N-1")
        stacked = torch.stack([by_layer[i] for i in range(len(by_layer))])
        concepts.append(add_layerwise_token(tokenizer, text_encoder, word, len(by_layer), stacked))
    return concepts
