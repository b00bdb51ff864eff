"""Augmentation: deterministic from the seed, strength 0 gives the originals, captions per image."""

import numpy as np
import pytest
from PIL import Image

from dreamstudy.augment import STRATEGIES, augment_subject, get_strategy, read_training_set
from dreamstudy.io import read_jsonl


@pytest.fixture
def originals(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / "in" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def pixels(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_same_seed_same_images(tmp_path, originals, strategy):
    for run in ("a", "b"):
        augment_subject(originals, strategy=strategy, strength=0.8, num_per_image=2, seed=7,
                        caption="a photo of sks dog", out_dir=tmp_path / run)
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_other_seed_other_images(tmp_path, originals):
    for run, seed in (("a", 1), ("b", 2)):
        augment_subject(originals, strategy="classic", strength=0.8, num_per_image=1, seed=seed,
                        caption="c", out_dir=tmp_path / run)
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert not np.array_equal(a["00_classic0.png"], b["00_classic0.png"])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strength_zero_is_identity(originals, strategy):
    images = [Image.open(p).convert("RGB") for p in originals]
    for image, variants in zip(images, get_strategy(strategy)(images, 0.0, 3, 0)):
        for variant in variants:
            assert np.array_equal(np.asarray(variant.image), np.asarray(image))


def test_classic_changes_images_with_strength(originals):
    images = [Image.open(p).convert("RGB") for p in originals]
    variants = get_strategy("classic")(images, 1.0, 2, 0)
    assert all(not np.array_equal(np.asarray(v.image), np.asarray(im))
               for im, vs in zip(images, variants) for v in vs)


def test_training_set_keeps_originals_and_captions(tmp_path, originals):
    out = tmp_path / "set"
    augment_subject(originals, strategy="classic", strength=0.5, num_per_image=2, seed=0,
                    caption="a photo of sks dog", out_dir=out)
    rows = read_jsonl(out / "captions.jsonl")
    assert len(rows) == 3 * (1 + 2) and sum(not r["augmented"] for r in rows) == 3
    assert {r["caption"] for r in rows} == {"a photo of sks dog"}
    for path, _ in read_training_set(out):
        assert path.is_file()
    assert np.array_equal(np.asarray(Image.open(out / "01.png")), np.asarray(Image.open(originals[1])))


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'cutout'.*classic"):
        get_strategy("cutout")
