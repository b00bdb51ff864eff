"""`specialist`: Specialist Diffusion's augmentations (CVPR 2023): one random op per augmentation out of
invert, posterize, solarize, sharpness, autocontrast, equalize, hflip and vflip (torchvision v2), named
in the caption ("inverted", "posterized", ...) so the model can attribute the change to the words.

Strength s is the probability that an augmentation gets an op (otherwise it is the original, untagged),
and the magnitude of the graded ops: posterize keeps 8 - ceil(4 s) bits (4 at s = 1, as RandAugment's
strongest), solarize inverts pixels above 255 (1 - s/2) (128 at s = 1), sharpness factor 1 + s (2 at
s = 1, RandomAdjustSharpness's default). s = 0 gives the originals.
"""

import math

import numpy as np
from torchvision.transforms.v2 import functional as F

from dreamstudy.augment.registry import GRADED, Augmented, Context, register
from dreamstudy.seeding import derive_seed

# caption word -> op(image, strength)
OPS = {
    "inverted": lambda im, s: F.invert(im),
    "posterized": lambda im, s: F.posterize(im, bits=8 - math.ceil(4 * s)),
    "solarized": lambda im, s: F.solarize(im, threshold=255 * (1 - s / 2)),
    "sharpened": lambda im, s: F.adjust_sharpness(im, sharpness_factor=1 + s),
    "high contrast": lambda im, s: F.autocontrast(im),
    "equalized": lambda im, s: F.equalize(im),
    "mirrored": lambda im, s: F.horizontal_flip(im),
    "upside down": lambda im, s: F.vertical_flip(im),
}


def specialist_op(image, strength: float, rng: np.random.Generator) -> Augmented:
    if rng.random() >= strength:
        return Augmented(image)
    word = str(rng.choice(list(OPS)))
    return Augmented(OPS[word](image, strength), (word,))


@register("specialist", reads=GRADED)
def specialist(images, ctx: Context) -> list[list[Augmented]]:
    rngs = [np.random.default_rng(derive_seed(ctx.seed, "specialist", i)) for i in range(len(images))]
    return [[specialist_op(image, ctx.strength, rng) for _ in range(ctx.num_per_image)]
            for image, rng in zip(images, rngs)]
