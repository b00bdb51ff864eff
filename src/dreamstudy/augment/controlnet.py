"""`controlnet`: the subject's Canny edges, rendered by a Canny ControlNet in new contexts.

Each original, resized to `ctx.resolution`, gives a Canny edge map (cv2.Canny on 8-bit grey levels; its
hysteresis thresholds default to 100 / 200, as in the ControlNet and diffusers Canny examples) that
conditions StableDiffusionControlNetPipeline (at full conditioning scale by default), with a context prompt
from prompts/contexts.txt ("a photo of a {class} in the snow"): the subject's outline in a new scene.

strength = the share of each original's `num_per_image` augmentations that are generated, the others
being copies of the original: strength x num_per_image of them, rounded stochastically (exact when it is
a whole number, right on average otherwise, so it also holds under `mix`, which asks for one at a time).
The training set keeps its size, so strength sets the share of synthetic images in it; 0 = the originals
only, as in `background`. (Lowering the conditioning scale instead would make strength 1 plain
text-to-image of the class, no longer the subject.)
No caption tags, as for `img2img`; generated images are at `ctx.resolution`.

ControlNet, thresholds, conditioning scale and denoising: `ctx.controlnet` (aug.controlnet); the ControlNet
is the built-in random-init one of a built-in `model.pretrained` ("tiny", "sd15-random"; models/tiny_controlnet.py),
whatever aug.controlnet.model says, since only it fits that random UNet.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image

from dreamstudy.augment.generative import GENERATIVE, base_pipeline, draw_prompts, fit, generators
from dreamstudy.augment.registry import Augmented, Context, register
from dreamstudy.models.loading import RANDOM_MODELS
from dreamstudy.models.tiny_controlnet import load_controlnet
from dreamstudy.seeding import derive_seed


def canny_edges(image: Image.Image, low: int, high: int) -> Image.Image:
    """White-on-black Canny edges as an RGB image, the control image Canny ControlNets were trained on."""
    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def generated_count(strength: float, num_per_image: int, rng: np.random.Generator) -> int:
    """strength x num_per_image, rounded up with probability its fractional part."""
    share = round(strength * num_per_image, 9)  # so that 0.3 x 10 = 3.0000000000000004 is exactly 3
    whole = math.floor(share)
    return whole + int(rng.random() < share - whole)


@functools.cache
def controlnet_pipeline(pretrained: str, controlnet_model: str) -> StableDiffusionControlNetPipeline:
    base = base_pipeline(pretrained)
    controlnet = load_controlnet(pretrained if pretrained in RANDOM_MODELS else controlnet_model,
                                 torch_dtype=base.dtype, device=base.device)
    # from_pipe shares the base weights; its own scheduler keeps its state out of the other pipelines'.
    pipe = StableDiffusionControlNetPipeline.from_pipe(
        base, controlnet=controlnet, scheduler=base.scheduler.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@register("controlnet", reads=(*GENERATIVE, "aug.controlnet"))
def controlnet(images, ctx: Context) -> list[list[Augmented]]:
    settings = ctx.controlnet
    out = []
    for i, image in enumerate(images):
        k = generated_count(ctx.strength, ctx.num_per_image,
                            np.random.default_rng(derive_seed(ctx.seed, "controlnet", "share", i)))
        rendered = []
        if k:
            pipe = controlnet_pipeline(ctx.pretrained, settings.model)
            edges = canny_edges(fit(image, ctx.resolution), settings.canny_low, settings.canny_high)
            rendered = pipe(prompt=draw_prompts(ctx, "controlnet", i)[:k], image=[edges] * k,
                            height=ctx.resolution, width=ctx.resolution,
                            num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                            controlnet_conditioning_scale=settings.conditioning_scale,
                            generator=generators(ctx, "controlnet", i)[:k]).images
        copies = [Augmented(image.copy()) for _ in range(ctx.num_per_image - k)]
        out.append([Augmented(r) for r in rendered] + copies)
    return out
