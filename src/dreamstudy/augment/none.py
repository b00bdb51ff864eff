"""`none`: the originals alone, the baseline every strategy is compared with."""

from dreamstudy.augment.registry import Augmented, Context, register


@register("none")
def no_augmentation(images, ctx: Context) -> list[list[Augmented]]:
    return [[] for _ in images]
