"""Regionally controllable sampling, after Mix-of-Show (Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
`mixofshow/pipelines/pipeline_regionally_t2iadapter.py`: `RegionT2I_AttnProcessor`, `region_rewrite`,
`_encode_region_prompt`). Our own code on a stock `StableDiffusionPipeline`; MoS's was read, not copied.

A global prompt describes the whole image; each `Region` adds a box and a prompt. In every cross-attention
layer (the UNet's `attn2`) the global output is computed as usual, then, for each region, the output with the
region's prompt embedding in place of the global one, and that output replaces the global one at the latent
positions inside the box. As in MoS:
- hard replacement (MoS's `replace_ratio = 1.0`): inside a box nothing of the global output is kept;
- where boxes overlap, the regions' outputs are averaged (MoS divides by its per-position box count);
- a box covers the layer's cells that lie wholly inside it: rows ceil(y0 h) .. floor(y1 h) - 1, columns
  ceil(x0 w) .. floor(x1 w) - 1 at that layer's h x w (MoS's rounding; we add a 1e-6 slack so that 0.3 x 10
  counts as 3), so a small box can vanish at the coarse layers;
- self-attention (`attn1`) is left alone: MoS's processor runs plain self-attention, nothing region-aware;
- classifier-free guidance: a region's embedding is [negative; region prompt], the same batch layout as the
  pipeline's [negative; global prompt], so the unconditional half inside a box attends to the very negative
  embedding it attends to outside it (MoS encodes a per-region negative prompt there; its example script
  `regionally_sample.sh` gives every region the global negative prompt, which is what we do always).
- ED-LoRA's layer-wise embeddings: on a pipeline made layer-wise (`edlora.layerwise_pipeline`) the region
  prompts are encoded layer-wise too, by the pipeline's own `encode_prompt`, and the wrapped processor
  (`edlora.LayerwiseProcessor`) gives each layer its slice, of the region's embedding as of the global one.
Left out: per-region negative prompts, and the T2I-Adapter pose/sketch conditions with their per-region
weights (no weights offline).

Boxes here are (x0, y0, x1, y1), fractions of the image width and height; MoS writes [top, left, bottom,
right], i.e. (y0, x0, y1, x1). The region processor wraps whatever processor the layer had (AttnProcessor2_0,
Custom Diffusion's, ...) and calls it once for the global prompt and once per region on the whole layer, so
it costs one extra cross-attention per region and layer, and reproduces the stock output exactly where no box
reaches (and everywhere when there are no regions).

    regions = [Region((0, 0, 0.5, 1), "a photo of a dog"), Region((0.5, 0, 1, 1), "a photo of a cat")]
    image = regional_pipeline_call(pipe, "a dog and a cat on a sofa", regions, height=512, width=512,
                                   generator=torch.Generator().manual_seed(0)).images[0]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from dreamstudy.multi.boxes import Box, check_box

_SLACK = 1e-6  # box edges within this of a cell edge count as on it (floating-point products like 0.3 * 10)


@dataclass(frozen=True)
class Region:
    """A box (x0, y0, x1, y1), fractions of the image's width and height (0, 0 = top left), and its prompt."""

    box: Box
    prompt: str

    def __post_init__(self):
        try:
            box = check_box(self.box)
        except ValueError as err:
            raise ValueError(f"Region(prompt={self.prompt!r}): box {err}") from None
        if not isinstance(self.prompt, str):
            raise ValueError(f"Region prompt must be a string, got {type(self.prompt).__name__}")
        object.__setattr__(self, "box", box)


def as_regions(regions: Sequence[Region | tuple]) -> list[Region]:
    """`Region`s, or (box, prompt) pairs made into them; a bad one is a ValueError naming regions[i]."""
    out = []
    for i, region in enumerate(regions):
        if isinstance(region, Region):
            out.append(region)
            continue
        try:
            out.append(Region(*region))
        except (TypeError, ValueError) as error:
            raise ValueError(f"regions[{i}]: {error}") from None
    return out


def layer_size(seq_len: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a UNet layer with `seq_len` positions: the latent's (h, w) halved, rounding up as the UNet's
    stride-2 convolutions do, until it has that many positions."""
    h, w = latent_size
    while h * w > seq_len and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != seq_len:
        raise ValueError(f"a layer of {seq_len} positions is no downsampling of the {latent_size} latent")
    return h, w


def box_mask(box: Box, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[h * w] bool, row-major like the UNet's flattened hidden states: the cells wholly inside `box`."""
    x0, y0, x1, y1 = box
    top, left = math.ceil(y0 * h - _SLACK), math.ceil(x0 * w - _SLACK)
    bottom, right = math.floor(y1 * h + _SLACK), math.floor(x1 * w + _SLACK)
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[top:bottom, left:right] = True
    return mask.flatten()


class RegionalAttnProcessor:
    """Cross-attention with regions: `inner` (the layer's own processor) with the global prompt's embedding,
    replaced inside each box by `inner` with that region's embedding; averaged where boxes overlap."""

    def __init__(self, inner, regions: Sequence[tuple[torch.Tensor, Box]], latent_size: tuple[int, int]):
        self.inner = inner
        self.regions = list(regions)  # (embedding [batch, tokens, dim] laid out as the pipeline's, box)
        self.latent_size = latent_size

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask)
        if encoder_hidden_states is None or not self.regions:
            return out
        if hidden_states.ndim != 3:
            raise ValueError(f"regional attention expects hidden states [batch, h*w, channels], got "
                             f"{tuple(hidden_states.shape)}")
        h, w = layer_size(hidden_states.shape[1], self.latent_size)
        total = torch.zeros_like(out)
        count = torch.zeros(h * w, dtype=out.dtype, device=out.device)
        for embedding, box in self.regions:
            mask = box_mask(box, h, w, device=out.device)
            if not mask.any():
                continue  # the box holds no whole cell at this resolution
            if embedding.shape[0] != hidden_states.shape[0]:
                raise ValueError(f"a region's embedding has batch {embedding.shape[0]}, the layer "
                                 f"{hidden_states.shape[0]}: install the regions for this call's batch")
            region_out = self.inner(attn, hidden_states, encoder_hidden_states=embedding,
                                    attention_mask=attention_mask)
            total[:, mask] += region_out[:, mask]
            count[mask] += 1
        covered = count > 0
        out[:, covered] = total[:, covered] / count[covered, None]
        return out


def _cross_attention(name: str) -> bool:
    return name.endswith("attn2.processor")


@contextlib.contextmanager
def regions_installed(pipe: StableDiffusionPipeline, regions: Sequence[Region | tuple], prompt: str | list[str], *,
                      height: int | None = None, width: int | None = None, guidance_scale: float = 7.5,
                      negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                      clip_skip: int | None = None) -> Iterator[None]:
    """Regional processors on `pipe.unet`'s cross-attention layers for one pipeline call with these
    arguments (they fix the batch layout and the latent size), the original processors back afterwards.
    Region prompts are encoded with the pipe's own tokenizer and text encoder."""
    regions = as_regions(regions)
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None  # the pipeline's own test
    rows = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
    device = pipe._execution_device
    embeddings = []
    with torch.no_grad():
        if guided:  # the negative half exactly as the pipeline encodes it
            _, negative = pipe.encode_prompt(prompt, device, num_images_per_prompt, True, negative_prompt,
                                             clip_skip=clip_skip)
        for region in regions:
            embedding, _ = pipe.encode_prompt(region.prompt, device, rows, False, clip_skip=clip_skip)
            embeddings.append(torch.cat([negative, embedding]) if guided else embedding)
    originals = pipe.unet.attn_processors
    installed = {name: RegionalAttnProcessor(processor, zip(embeddings, (r.box for r in regions)), latent_size)
                 if _cross_attention(name) else processor for name, processor in originals.items()}
    pipe.unet.set_attn_processor(installed)
    try:
        yield
    finally:
        pipe.unet.set_attn_processor(dict(originals))  # set_attn_processor pops from the dict it gets


def regional_pipeline_call(pipe: StableDiffusionPipeline, prompt: str | list[str],
                           regions: Sequence[Region | tuple], *, height: int | None = None,
                           width: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                           generator: torch.Generator | list[torch.Generator] | None = None,
                           negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                           **kwargs):
    """`pipe(prompt, ...)` with `regions`: each region's prompt rules the cross-attention inside its box.
    Returns what the pipeline returns; other keyword arguments go to the pipeline unchanged."""
    with regions_installed(pipe, regions, prompt, height=height, width=width, guidance_scale=guidance_scale,
                           negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                           clip_skip=kwargs.get("clip_skip")):
        return pipe(prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, generator=generator, negative_prompt=negative_prompt,
                    num_images_per_prompt=num_images_per_prompt, **kwargs)
