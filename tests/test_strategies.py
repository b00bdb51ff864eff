"""The strategies scale, specialist, background and mix (determinism and strength-0 identity are also
covered for every registered strategy by test_augment.py)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from dreamstudy.augment import Augmented, Context, augment_subject, get_strategy
from dreamstudy.augment import background as bg
from dreamstudy.augment.registry import STRATEGIES
from dreamstudy.augment.scale import CANVAS, FAR, NEAR
from dreamstudy.augment.specialist import OPS
from dreamstudy.io import read_jsonl
from dreamstudy.params import BACKGROUNDS, BackgroundParams
from tests.helpers import noise_image

CAPTION = "a photo of sks dog"
# No generated scenes (the tiny model on 2 shared CPU cores is the slow part)
PROCEDURAL = BackgroundParams(kinds=[k for k in BACKGROUNDS if k != "scene"])


def context(strength, num_per_image, seed=0, **kw):
    return Context(strength=strength, num_per_image=num_per_image, seed=seed, class_name="dog",
                   pretrained="tiny", resolution=32, **kw)


def array(image):
    return np.asarray(image)


@pytest.fixture
def noise():
    return noise_image(0)


@pytest.fixture
def disc(tmp_path):
    """A bright disc (radius 18) on a flat dark background, 64 px, saved as an original."""
    y, x = np.mgrid[:64, :64]
    inside = (x - 32) ** 2 + (y - 32) ** 2 < 18 ** 2
    rgb = np.full((64, 64, 3), 30, np.uint8)
    rgb[inside] = (240, 220, 200)
    path = tmp_path / "in" / "00.png"
    path.parent.mkdir()
    Image.fromarray(rgb).save(path)
    return path, inside


@pytest.mark.parametrize("strategy", ["scale", "specialist", "background", "mix"])
def test_other_seed_other_images(noise, strategy):
    ctx = dict(strength=1.0, num_per_image=4, mix={"scale": 1.0, "specialist": 1.0}, background=PROCEDURAL)
    a, b = (get_strategy(strategy)([noise], context(seed=seed, **ctx))[0] for seed in (1, 2))
    assert any(not np.array_equal(array(u.image), array(v.image)) for u, v in zip(a, b))


# scale

def test_scale_masks_align_with_content_and_tags_follow_the_size():
    # a flat colour stays that colour under resizing, so the content is exactly where the canvas is not
    image = Image.new("RGB", (60, 60), (250, 30, 30))
    variants = get_strategy("scale")([image], context(1.0, 300))[0]
    zoomed_out = [v for v in variants if v.mask is not None]
    assert 0.56 < len(zoomed_out) / len(variants) < 0.76  # Custom Diffusion's p = 0.66 at full strength
    for v in zoomed_out:
        content = (array(v.image) != CANVAS).any(axis=2)
        box = array(v.mask) == 255
        assert np.array_equal(box, content) and v.mask.size == v.image.size
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        side = len(cols)
        assert box.sum() == len(rows) * side and 20 <= side < 60  # one rectangle, side in [size/3, size)
        assert v.tags in (((FAR[0],), (FAR[1],)) if side < 36 else ((),))
    # the rest are zoomed in (and tagged) or zoomed out by so little that nothing changed (untagged)
    assert all(v.tags in ((), (NEAR[0],), (NEAR[1],)) for v in variants if v.mask is None)
    assert {t for v in variants for t in v.tags} == {*FAR, *NEAR}  # both words of each pair get chosen


def test_scale_ranges_shrink_with_strength():
    ramp = Image.fromarray(np.repeat(np.arange(0, 192, 4, dtype=np.uint8)[None, :, None], 48, 0).repeat(3, 2))
    for v in get_strategy("scale")([ramp], context(0.3, 100))[0]:
        if v.mask is not None:  # sides in [0.8 size, size]: never small enough for a tag
            assert array(v.mask).any(axis=0).sum() >= round(0.8 * 48) and v.tags == ()
        elif v.tags:  # zoomed 1.06-1.12x: the ramp's slope (4 per px) falls as much
            slope = np.diff(array(v.image)[24, 8:-8, 0].astype(float)).mean()
            assert 4 / 1.13 < slope < 4 / 1.05 and v.tags[0] in NEAR


def test_scale_captions_and_masks_on_disk(tmp_path, disc):
    augment_subject([disc[0]], strategy="scale", context=context(1.0, 12, seed=3), caption=CAPTION,
                    out_dir=tmp_path / "set")
    rows = [r for r in read_jsonl(tmp_path / "set" / "captions.jsonl") if r["augmented"]]
    tagged = [r for r in rows if r["caption"] != CAPTION]
    assert tagged and all(r["caption"].removesuffix(" " + CAPTION) in (*FAR, *NEAR) for r in tagged)
    for r in rows:
        if r["mask"]:
            mask, image = Image.open(tmp_path / "set" / r["mask"]), Image.open(tmp_path / "set" / r["file"])
            assert mask.mode == "L" and mask.size == image.size


# specialist

def test_specialist_applies_the_op_its_tag_names(noise):
    variants = get_strategy("specialist")([noise], context(1.0, 200))[0]
    assert {v.tags[0] for v in variants} == set(OPS)  # every op occurs, one per augmentation
    for v in variants:
        assert len(v.tags) == 1 and np.array_equal(array(v.image), array(OPS[v.tags[0]](noise, 1.0)))


@pytest.mark.parametrize("strength, bits, threshold, sharpness", [(1.0, 4, 128, 2.0), (0.25, 7, 224, 1.25)])
def test_specialist_ops_are_what_their_words_say(noise, strength, bits, threshold, sharpness):
    # PIL's own ops as the reference, magnitudes as the docstring says
    expected = {
        "inverted": ImageOps.invert(noise), "posterized": ImageOps.posterize(noise, bits),
        "solarized": ImageOps.solarize(noise, threshold),
        "sharpened": ImageEnhance.Sharpness(noise).enhance(sharpness),
        "high contrast": ImageOps.autocontrast(noise), "equalized": ImageOps.equalize(noise),
        "mirrored": ImageOps.mirror(noise), "upside down": ImageOps.flip(noise),
    }
    assert expected.keys() == OPS.keys()
    for word, image in expected.items():
        assert np.array_equal(array(OPS[word](noise, strength)), array(image)), word


def test_specialist_strength_is_the_share_of_changed_images(noise):
    variants = get_strategy("specialist")([noise], context(0.5, 300))[0]
    plain = [v for v in variants if not v.tags]
    assert 0.4 < len(plain) / len(variants) < 0.6
    assert all(np.array_equal(array(v.image), array(noise)) for v in plain)


def test_specialist_captions_carry_the_op(tmp_path, disc):
    augment_subject([disc[0]], strategy="specialist", context=context(1.0, 6), caption=CAPTION,
                    out_dir=tmp_path / "set")
    rows = [r for r in read_jsonl(tmp_path / "set" / "captions.jsonl") if r["augmented"]]
    assert len(rows) == 6 and all(r["caption"].removesuffix(" " + CAPTION) in OPS for r in rows)


# background

def test_background_subject_mask_is_saved_and_covers_the_disc(tmp_path, disc):
    path, inside = disc
    augment_subject([path], strategy="background", context=context(1.0, 3, background=PROCEDURAL), caption=CAPTION,
                    out_dir=tmp_path / "set")
    rows = [r for r in read_jsonl(tmp_path / "set" / "captions.jsonl") if r["augmented"]]
    assert len(rows) == 3
    for r in rows:
        assert r["mask"] is None and r["caption"] == CAPTION  # the loss sees the whole composite
        found = np.asarray(Image.open(tmp_path / "set" / r["subject_mask"])) == 255
        assert (found & inside).sum() / (found | inside).sum() > 0.8
        image = np.asarray(Image.open(tmp_path / "set" / r["file"]))
        y, x = np.mgrid[:64, :64]
        core = (x - 32) ** 2 + (y - 32) ** 2 < 14 ** 2  # the disc minus its feathered edge stays as it was
        assert np.array_equal(image[core], np.asarray(Image.open(path))[core])


@pytest.mark.parametrize("strength, opacity", [(1.0, 1.0), (0.5, 0.75)])
def test_background_composite(strength, opacity):
    rgb = np.full((64, 64, 3), 100.0, np.float32)
    fg = np.zeros((64, 64), bool)
    fg[16:48, 16:48] = True
    out = array(bg.composite(rgb, fg, np.full((64, 64, 3), 200, np.uint8), strength)).astype(int)
    assert (out[20:44, 20:44] == 100).all()  # the subject, away from its feathered edge
    assert (out[:12] == round(100 + 100 * opacity)).all()  # the new background over the old
    assert (np.diff(out[32, 10:22, 0]) <= 0).all() and 100 < out[32, 16, 0] < 200  # a soft edge


def test_background_falls_back_to_the_centre_box():
    found = bg.subject_mask(np.full((50, 50, 3), 90, np.uint8), seed=0)  # nothing to find on a flat image
    assert found[4:46, 4:46].all() and not found[:4].any() and not found[:, 46:].any()


def far_from(inside: np.ndarray) -> np.ndarray:
    far = np.ones_like(inside)
    far[8:56, 8:56] = False  # well outside the disc and its feathered edge
    return far


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_background_kinds_replace_the_background(disc, kind):
    only = BackgroundParams(kinds=[kind], num_inference_steps=4)  # the wiring, not the picture, is under test
    path, inside = disc
    original = np.asarray(Image.open(path))
    runs = [get_strategy("background")([Image.open(path).convert("RGB")], context(1.0, 1, seed=s, background=only))[0]
            for s in (0, 0, 1)]
    assert all(np.array_equal(array(u.image), array(v.image)) for u, v in zip(runs[0], runs[1]))
    far = far_from(inside)
    for v in runs[0] + runs[2]:
        assert v.subject_mask is not None and not np.array_equal(array(v.image)[far], original[far])
    assert not np.array_equal(array(runs[0][0].image), array(runs[2][0].image))


def test_background_draws_only_its_kinds(disc):
    path, inside = disc
    image, far = Image.open(path).convert("RGB"), far_from(inside)

    def one_colour(kinds: list[str]) -> list[bool]:
        """Whether each of 8 new backgrounds drawn from `kinds` is a single colour."""
        variants = get_strategy("background")([image], context(1.0, 8, background=BackgroundParams(kinds=kinds)))
        return [len(np.unique(array(v.image)[far], axis=0)) == 1 for v in variants[0]]

    assert all(one_colour(["solid"])) and not any(one_colour(["noise", "stripes", "checker"]))


@pytest.mark.parametrize("change", [{"num_inference_steps": 5}, {"guidance_scale": 2.0}])
def test_background_scene_settings_change_the_scenes(disc, change):
    scenes = BackgroundParams(kinds=["scene"], num_inference_steps=4)
    image = Image.open(disc[0]).convert("RGB")
    a, b = (get_strategy("background")([image], context(1.0, 2, background=s))[0]
            for s in (scenes, scenes.model_copy(update=change)))
    assert not any(np.array_equal(array(u.image), array(v.image)) for u, v in zip(a, b))


def test_background_share_follows_strength(disc):
    image = Image.open(disc[0]).convert("RGB")
    variants = get_strategy("background")([image], context(0.5, 200, background=PROCEDURAL))[0]
    kept = [v for v in variants if v.subject_mask is None]
    assert 0.4 < len(kept) / len(variants) < 0.6
    assert all(np.array_equal(array(v.image), array(image)) for v in kept)


# mix

@pytest.fixture
def fakes(monkeypatch):
    """Strategies a, b, c that tag their one augmentation with their name and record their context."""
    calls = []

    def fake(name):
        def strategy(images, ctx):
            calls.append((name, ctx))
            return [[Augmented(image, (name,)) for _ in range(ctx.num_per_image)] for image in images]
        return strategy

    for name in "abc":
        monkeypatch.setitem(STRATEGIES, name, (fake(name), ()))
    return calls


def test_mix_follows_the_weights(noise, fakes):
    variants = get_strategy("mix")([noise, noise], context(0.4, 400, seed=5, mix={"a": 3.0, "b": 1.0}))
    counts = Counter(v.tags[0] for vs in variants for v in vs)
    assert set(counts) == {"a", "b"} and sum(counts.values()) == 800
    assert 0.70 < counts["a"] / 800 < 0.80
    assert all(ctx.num_per_image == 1 and ctx.strength == 0.4 for _, ctx in fakes)
    assert len({ctx.seed for _, ctx in fakes}) == 800 and all(ctx.seed != 5 for _, ctx in fakes)


def test_mix_delegates_to_real_strategies(noise):
    variants = get_strategy("mix")([noise], context(1.0, 20, mix={"specialist": 1.0, "none": 1.0}))[0]
    assert 0 < len(variants) < 20  # `none` makes nothing
    assert all(len(v.tags) == 1 and v.tags[0] in OPS for v in variants)


@pytest.mark.parametrize("weights", [{}, {"mix": 1.0, "classic": 1.0}])
def test_mix_needs_other_strategies(noise, weights):
    with pytest.raises(ValueError, match="mix needs"):
        get_strategy("mix")([noise], context(0.5, 1, mix=weights))
