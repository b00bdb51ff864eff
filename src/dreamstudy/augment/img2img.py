"""`img2img`: SDEdit re-renderings of each original in a new context, as DA-Fusion augments.

strength = img2img's denoising strength: the original is noised to timestep strength x T and denoised
by the base model with a context prompt from prompts/contexts.txt ("a photo of a {class} on a beach");
0 keeps the original, 1 replaces it with a text-to-image sample. Strength 0 gives back the originals
without calling the model: diffusers 0.42 accepts it but runs zero denoising steps and still
round-trips the image through the VAE, which is lossy, not the identity.

No caption tags: the subject stays the subject (SDEdit keeps the original's layout and colours);
augmentations are at `ctx.resolution`. Schedule length and guidance: `ctx.img2img` (aug.img2img).
"""

from __future__ import annotations

import functools
import math

from diffusers import StableDiffusionImg2ImgPipeline

from dreamstudy.augment.generative import GENERATIVE, base_pipeline, draw_prompts, fit, generators
from dreamstudy.augment.registry import Augmented, Context, register


def img2img_steps(strength: float, schedule: int, train_steps: int) -> int:
    """A schedule long enough that img2img runs at least one step (it runs int(steps x strength)), up to
    one step per training timestep: below strength 1 / train_steps (0.001) it runs none."""
    return min(max(schedule, math.floor(1 / strength) + 1), train_steps)


@functools.cache
def img2img_pipeline(pretrained: str) -> StableDiffusionImg2ImgPipeline:
    base = base_pipeline(pretrained)
    # from_pipe shares the weights; a scheduler of its own keeps img2img's begin index out of the others'.
    scheduler = base.scheduler.from_config(base.scheduler.config)
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(base, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@register("img2img", reads=(*GENERATIVE, "aug.img2img"))
def img2img(images, ctx: Context) -> list[list[Augmented]]:
    if ctx.strength == 0 or ctx.num_per_image == 0:
        return [[Augmented(image.copy()) for _ in range(ctx.num_per_image)] for image in images]
    pipe = img2img_pipeline(ctx.pretrained)
    settings = ctx.img2img
    schedule = img2img_steps(ctx.strength, settings.num_inference_steps, pipe.scheduler.config.num_train_timesteps)
    out = []
    for i, image in enumerate(images):
        start = [fit(image, ctx.resolution)] * ctx.num_per_image
        rendered = pipe(prompt=draw_prompts(ctx, "img2img", i), image=start,
                        strength=ctx.strength, num_inference_steps=schedule, guidance_scale=settings.guidance_scale,
                        generator=generators(ctx, "img2img", i)).images
        out.append([Augmented(r) for r in rendered])
    return out
