"""Augmentation: deterministic from the seed, strength 0 gives the originals, captions per image."""

import numpy as np
import pytest
from PIL import Image

from dreamstudy.augment import MODULES, Context, augment_subject, get_strategy, read_training_set
from dreamstudy.io import read_jsonl
from dreamstudy.params import load_params
from tests.helpers import ROOT

SMOKE = load_params(ROOT / "params.smoke.yaml").aug


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


def context(strength, num_per_image, seed=0):
    # generative strategies run the tiny model at 32 px with the smoke settings; `mix` draws from every other
    # kind of strategy
    return Context(strength=strength, num_per_image=num_per_image, seed=seed, class_name="dog",
                   pretrained="tiny", resolution=32,
                   mix={"classic": 1.0, "scale": 1.0, "specialist": 1.0, "background": 1.0},
                   img2img=SMOKE.img2img, controlnet=SMOKE.controlnet, background=SMOKE.background)


def pixels(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("strategy", sorted(MODULES))
def test_same_seed_same_images(tmp_path, originals, strategy):
    for run in ("a", "b"):
        augment_subject(originals, strategy=strategy, context=context(0.8, 2, seed=7),
                        caption="a photo of sks dog", out_dir=tmp_path / run)
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_other_seed_other_images(tmp_path, originals):
    for run, seed in (("a", 1), ("b", 2)):
        augment_subject(originals, strategy="classic", context=context(0.8, 1, seed=seed),
                        caption="c", out_dir=tmp_path / run)
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert not np.array_equal(a["00_classic0.png"], b["00_classic0.png"])


@pytest.mark.parametrize("strategy", sorted(MODULES))
def test_strength_zero_is_identity(originals, strategy):
    images = [Image.open(p).convert("RGB") for p in originals]
    for image, variants in zip(images, get_strategy(strategy)(images, context(0.0, 3))):
        for variant in variants:
            assert np.array_equal(np.asarray(variant.image), np.asarray(image))


def test_classic_changes_images_with_strength(originals):
    images = [Image.open(p).convert("RGB") for p in originals]
    variants = get_strategy("classic")(images, context(1.0, 2))
    assert all(not np.array_equal(np.asarray(v.image), np.asarray(im))
               for im, vs in zip(images, variants) for v in vs)


def test_training_set_keeps_originals_and_captions(tmp_path, originals):
    out = tmp_path / "set"
    augment_subject(originals, strategy="classic", context=context(0.5, 2), caption="a photo of sks dog",
                    out_dir=out, contact_sheet=tmp_path / "sheet.png")
    rows = read_jsonl(out / "captions.jsonl")
    assert len(rows) == 3 * (1 + 2) and sum(not r["augmented"] for r in rows) == 3
    assert {r["caption"] for r in rows} == {"a photo of sks dog"}
    for example in read_training_set(out):
        assert example.image.is_file() and example.mask is None
    sheet = Image.open(tmp_path / "sheet.png")  # 3 rows of (original + 2 augmentations), 2 px padding
    assert sheet.size == (3 * 48 + 4 * 2, 3 * 48 + 4 * 2)
    assert np.array_equal(np.asarray(Image.open(out / "01.png")), np.asarray(Image.open(originals[1])))


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'cutout'.*classic"):
        get_strategy("cutout")
