"""A subject's training set on disk: its originals plus their augmentations, loss masks where a strategy
makes them, subject masks where a strategy finds the subject (for inspection), and captions.jsonl (one
row per image: file, caption, source, augmented, mask, subject_mask)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from dreamstudy.augment.registry import Context, get_strategy
from dreamstudy.io import atomic_dir, atomic_file, write_jsonl
from dreamstudy.trainset import CAPTIONS, Example, read_training_set  # noqa: F401  (re-exported)
MASKS = "masks"
SUBJECT_MASKS = "subject_masks"


def instance_caption(identifier: str, class_name: str) -> str:
    return f"a photo of {identifier} {class_name}"


def augment_subject(originals: list[Path], *, strategy: str, context: Context, caption: str,
                    out_dir: str | Path, contact_sheet: str | Path | None = None) -> None:
    """Write the originals and their augmentations into `out_dir`, with one caption row per image,
    and, if asked, a contact sheet PNG (a row per original: it, then its augmentations)."""
    images = [Image.open(path).convert("RGB") for path in originals]
    augmented = get_strategy(strategy)(images, context)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for path, image, variants in zip(originals, images, augmented, strict=True):
            image.save(tmp / f"{path.stem}.png")
            rows.append({"file": f"{path.stem}.png", "caption": caption, "source": path.name,
                         "augmented": False, "mask": None, "subject_mask": None})
            for k, variant in enumerate(variants):
                name = f"{path.stem}_{strategy}{k}.png"
                variant.image.save(tmp / name)
                rows.append({"file": name, "caption": " ".join((*variant.tags, caption)), "source": path.name,
                             "augmented": True, "mask": save_mask(tmp, MASKS, name, variant.mask),
                             "subject_mask": save_mask(tmp, SUBJECT_MASKS, name, variant.subject_mask)})
        write_jsonl(tmp / CAPTIONS, rows)
    if contact_sheet is not None:
        write_contact_sheet(contact_sheet, images, augmented)


def save_mask(root: Path, folder: str, name: str, mask: Image.Image | None) -> str | None:
    """Save `mask` as root/folder/name; its path relative to root (None, and nothing saved, without one)."""
    if mask is None:
        return None
    (root / folder).mkdir(exist_ok=True)
    mask.save(root / folder / name)
    return f"{folder}/{name}"


def write_contact_sheet(path: str | Path, images: list[Image.Image], augmented) -> None:
    columns = 1 + max((len(v) for v in augmented), default=0)
    size = images[0].size
    tiles = []
    for image, variants in zip(images, augmented, strict=True):
        row = [image, *(v.image.resize(size) for v in variants)]
        row += [Image.new("RGB", size, "white")] * (columns - len(row))
        tiles += [TF.pil_to_tensor(tile) for tile in row]
    grid = make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=255)
    with atomic_file(path, "wb") as handle:
        TF.to_pil_image(grid).save(handle, format="PNG")
