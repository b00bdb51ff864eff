"""A subject's training set on disk: its originals plus their augmentations, and captions.jsonl."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dreamstudy.augment.registry import get_strategy
from dreamstudy.io import atomic_dir, read_jsonl, write_jsonl

CAPTIONS = "captions.jsonl"


def instance_caption(identifier: str, class_name: str) -> str:
    return f"a photo of {identifier} {class_name}"


def augment_subject(originals: list[Path], *, strategy: str, strength: float, num_per_image: int,
                    seed: int, caption: str, out_dir: str | Path) -> None:
    """Write the originals and their augmentations into `out_dir`, with one caption row per image."""
    augment = get_strategy(strategy)
    images = [Image.open(path).convert("RGB") for path in originals]
    augmented = augment(images, strength, num_per_image, seed)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for path, image, variants in zip(originals, images, augmented, strict=True):
            image.save(tmp / f"{path.stem}.png")
            rows.append({"file": f"{path.stem}.png", "caption": caption, "source": path.name, "augmented": False})
            for k, variant in enumerate(variants):
                name = f"{path.stem}_{strategy}{k}.png"
                variant.image.save(tmp / name)
                tagged = " ".join((*variant.tags, caption))
                rows.append({"file": name, "caption": tagged, "source": path.name, "augmented": True})
        write_jsonl(tmp / CAPTIONS, rows)


def read_training_set(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a training set written by `augment_subject`."""
    folder = Path(folder)
    captions = folder / CAPTIONS
    if not captions.is_file():
        raise FileNotFoundError(f"{captions}: missing; run the augment stage first")
    return [(folder / row["file"], row["caption"]) for row in read_jsonl(captions)]
