"""`scale`: Custom Diffusion's zoom augmentation (as in diffusers' train_custom_diffusion.py).

With probability 0.66 s the image is zoomed out: shrunk to a random side in [size (1 - 2/3 s), size],
pasted at a random place on an empty canvas, and the empty part masked out of the loss; the caption
gains "a far away" or "very small" when the side is under 0.6 size. Otherwise it is zoomed in
1 + (0.2..0.4) s times and cropped back to size at a random offset (centre-ish: the crop always keeps
at least 1/1.4 of the image), and gains "zoomed in" or "close up". At s = 1 these are Custom Diffusion's
ranges ([size/3, size], 1.2-1.4x); at s = 0 every image comes back unchanged, untagged and unmasked.
"""

import numpy as np
from PIL import Image

from dreamstudy.augment.registry import GRADED, Augmented, Context, register
from dreamstudy.seeding import derive_seed

FAR = ("a far away", "very small")
NEAR = ("zoomed in", "close up")
CANVAS = (127, 127, 127)  # mid-grey, the zero of SD's [-1, 1] pixels as in Custom Diffusion; masked out anyway
RESAMPLE = Image.Resampling.BICUBIC


def resized(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image if size == image.size else image.resize(size, RESAMPLE)


def zoom_out(image: Image.Image, factor: float, rng: np.random.Generator) -> Augmented:
    small = resized(image, factor)
    if small.size == image.size:
        return Augmented(image)
    left, top = (int(rng.integers(0, full - part + 1)) for full, part in zip(image.size, small.size))
    canvas = Image.new("RGB", image.size, CANVAS)
    canvas.paste(small, (left, top))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (left, top, left + small.width, top + small.height))
    tags = (str(rng.choice(FAR)),) if small.width < 0.6 * image.width else ()  # only clearly small ones
    return Augmented(canvas, tags, mask)


def zoom_in(image: Image.Image, factor: float, rng: np.random.Generator) -> Augmented:
    big = resized(image, factor)
    if big.size == image.size:
        return Augmented(image)
    left, top = (int(rng.integers(0, part - full + 1)) for full, part in zip(image.size, big.size))
    return Augmented(big.crop((left, top, left + image.width, top + image.height)), (str(rng.choice(NEAR)),))


def zoom(image: Image.Image, strength: float, rng: np.random.Generator) -> Augmented:
    if rng.random() < 0.66 * strength:
        return zoom_out(image, rng.uniform(1 - 2 / 3 * strength, 1.0), rng)
    return zoom_in(image, 1 + rng.uniform(0.2, 0.4) * strength, rng)


@register("scale", reads=GRADED)
def scale(images, ctx: Context) -> list[list[Augmented]]:
    rngs = [np.random.default_rng(derive_seed(ctx.seed, "scale", i)) for i in range(len(images))]
    return [[zoom(image, ctx.strength, rng) for _ in range(ctx.num_per_image)] for image, rng in zip(images, rngs)]
