"""Image files as the metrics read them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image


def open_images(paths: Iterable[str | Path]) -> list[Image.Image]:
    """RGB images, files closed once read (thousands of samples would otherwise exhaust file handles)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
