"""`classic`: random resized crop, horizontal flip, rotation and colour jitter (torchvision v2).

Every magnitude is proportional to `strength`, so strength 0 gives back each original unchanged:
crop scale in [1 - 0.5 s, 1], aspect ratio within 1 +- 0.25 s, flip with probability 0.5 s,
rotation up to 30 s degrees, brightness/contrast/saturation +- 0.4 s and hue +- 0.1 s.
"""

import torch
from torchvision.transforms import v2

from dreamstudy.augment.registry import GRADED, Augmented, Context, register


def classic_transform(size: int, strength: float) -> v2.Compose:
    s = strength
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(1 - 0.5 * s, 1.0), ratio=(1 - 0.25 * s, 1 + 0.25 * s), antialias=True),
        v2.RandomHorizontalFlip(p=0.5 * s),
        v2.RandomRotation(30.0 * s),
        v2.ColorJitter(brightness=0.4 * s, contrast=0.4 * s, saturation=0.4 * s, hue=0.1 * s),
    ])


@register("classic", reads=GRADED)
def classic(images, ctx: Context) -> list[list[Augmented]]:
    # torchvision v2 draws from torch's global generator: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return [
            [Augmented(classic_transform(image.width, ctx.strength)(image)) for _ in range(ctx.num_per_image)]
            for image in images
        ]
