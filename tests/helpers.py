"""What several test modules build: the smoke params, noise images, a small training set."""

from pathlib import Path

import numpy as np
from PIL import Image

from dreamstudy.methods.trainer import Examples
from dreamstudy.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def smoke_train_params(**sections):
    """params.smoke.yaml's `train` section, with some method sections' keys changed."""
    train = load_params(ROOT / "params.smoke.yaml").train
    return train.model_copy(update={name: getattr(train, name).model_copy(update=change)
                                    for name, change in sections.items()})


def noise_image(seed: int, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def noise_examples(folder: Path, count: int, seed: int, size: int = 40,
                   caption: str = "a photo of sks dog") -> Examples:
    """`count` noise images written into `folder`, each with `caption`."""
    paths = [folder / f"{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        noise_image(seed * 1000 + i, size).save(path)
    return Examples([(path, caption) for path in paths])
