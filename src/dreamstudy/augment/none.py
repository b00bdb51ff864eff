"""`none`: the originals alone, the baseline every strategy is compared with."""

from dreamstudy.augment.registry import Augmented, register


@register("none")
def no_augmentation(images, strength, num_per_image, seed) -> list[list[Augmented]]:
    return [[] for _ in images]
