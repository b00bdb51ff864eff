"""`mix`: a weighted mixture of the other strategies. Each augmentation picks one strategy from `ctx.mix`
(strategy -> weight) with a seeded draw and delegates to it: that strategy on the one image, with
num_per_image 1 and a seed derived for this slot. Strength passes through unchanged, so s = 0 gives the
originals as every delegate does. A delegate that makes nothing (`none`) leaves its slot empty, so `none`
in the mix thins the augmented set rather than repeating originals. It imports every other strategy, any
of which `aug.mix` may name, and reads what the ones it names read.
"""

from dataclasses import replace

import numpy as np

from dreamstudy.augment import background, classic, controlnet, img2img, none, scale, specialist  # noqa: F401
from dreamstudy.augment.registry import GRADED, Augmented, Context, get_strategy, register, strategy_reads
from dreamstudy.seeding import derive_seed


def mix_reads(params) -> list[str]:
    delegated = [key for name in params.aug.mix for key in strategy_reads(name, params)]
    return list(dict.fromkeys([*GRADED, "aug.mix", *delegated]))


@register("mix", reads=mix_reads)
def mix(images, ctx: Context) -> list[list[Augmented]]:
    if not ctx.mix or "mix" in ctx.mix:
        raise ValueError(f"mix needs weights of strategies other than mix, got {ctx.mix!r}")
    names = list(ctx.mix)
    weights = np.array([ctx.mix[name] for name in names], float)
    rng = np.random.default_rng(derive_seed(ctx.seed, "mix"))
    out = []
    for i, image in enumerate(images):
        variants = []
        for k in range(ctx.num_per_image):
            name = names[rng.choice(len(names), p=weights / weights.sum())]
            slot = replace(ctx, num_per_image=1, seed=derive_seed(ctx.seed, "mix", i, k))
            variants += get_strategy(name)([image], slot)[0]
        out.append(variants)
    return out
