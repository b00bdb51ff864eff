"""Generative augmentation (img2img, controlnet) and the tiny ControlNet, offline on the tiny model at 32 px."""

import hashlib
import importlib
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image

from dreamstudy.augment import Context, augment_subject, get_strategy, read_training_set
from dreamstudy.augment.controlnet import canny_edges, generated_count
from dreamstudy.augment.generative import base_pipeline, context_prompts, draw_prompts
from dreamstudy.augment.img2img import img2img_steps
from dreamstudy.io import read_jsonl
from dreamstudy.models.loading import ModelLoadError, cache_dir, random_model_folder as tiny_folder
from dreamstudy.models.tiny_controlnet import build_tiny_controlnet, load_controlnet, tiny_controlnet_folder
from dreamstudy.params import load_params
from tests.helpers import ROOT, noise_image

GENERATIVE = ("img2img", "controlnet")
img2img_module = importlib.import_module("dreamstudy.augment.img2img")
controlnet_module = importlib.import_module("dreamstudy.augment.controlnet")
SMOKE = load_params(ROOT / "params.smoke.yaml").aug  # aug.img2img and aug.controlnet at smoke scale (4 steps)


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    # A fresh model cache, and no pipeline cached in this process from another one, so that the tiny
    # model and ControlNet are built and loaded here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMSTUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
        clear_pipelines()
        yield cache_dir()
        clear_pipelines()


def clear_pipelines():
    for cached in (base_pipeline, img2img_module.img2img_pipeline, controlnet_module.controlnet_pipeline):
        cached.cache_clear()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


noise = noise_image


def ctx(strength, num_per_image, seed=0, **changes):
    """A context on the tiny model at 32 px with the smoke settings, some of them changed."""
    settings = {"pretrained": "tiny", "img2img": SMOKE.img2img, "controlnet": SMOKE.controlnet, **changes}
    return Context(strength=strength, num_per_image=num_per_image, seed=seed, class_name="dog", resolution=32,
                   **settings)


def arrays(variants):
    return [np.asarray(v.image) for vs in variants for v in vs]


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_context_prompts_have_one_class_slot():
    prompts = context_prompts()
    assert 12 <= len(prompts) <= 32 and len(set(prompts)) == len(prompts)
    assert all(p.count("{class}") == 1 for p in prompts)
    drawn = draw_prompts(ctx(1, 4), "img2img", 0)
    assert len(set(drawn)) == 4 and all(" dog " in p for p in drawn)
    assert drawn == draw_prompts(ctx(1, 4), "img2img", 0) != draw_prompts(ctx(1, 4), "img2img", 1)


@pytest.mark.parametrize("strategy", GENERATIVE)
def test_strength_zero_gives_originals_without_the_model(monkeypatch, strategy):
    def no_model(*args):
        raise AssertionError("strength 0 must not load a model")
    monkeypatch.setattr(img2img_module, "img2img_pipeline", no_model)
    monkeypatch.setattr(controlnet_module, "controlnet_pipeline", no_model)
    images = [noise(0), noise(1)]
    variants = get_strategy(strategy)(images, ctx(0.0, 3))
    assert [len(vs) for vs in variants] == [3, 3]
    assert all(np.array_equal(np.asarray(v.image), np.asarray(im)) and v.tags == () and v.mask is None
               for im, vs in zip(images, variants) for v in vs)


@pytest.mark.parametrize("strength", [1e-3, 0.01, 0.05, 0.1, 1 / 3, 0.5, 0.99, 1.0])
def test_img2img_always_denoises_at_least_one_step(strength):
    steps = img2img_steps(strength, 20, 1000)
    assert 20 <= steps <= 1000 and int(steps * strength) >= 1  # the number of steps diffusers runs
    assert strength < 0.1 or steps == 20


def test_img2img_schedule_stops_at_one_step_per_timestep():
    assert img2img_steps(1e-9, 20, 1000) == 1000


def test_img2img_renders_at_resolution_by_seed_and_strength():
    images = [noise(0), noise(1)]
    a = get_strategy("img2img")(images, ctx(0.5, 2, seed=3))
    assert all(v.image.size == (32, 32) and v.image.mode == "RGB" and v.tags == () for vs in a for v in vs)
    same = get_strategy("img2img")(images, ctx(0.5, 2, seed=3))
    other_seed = get_strategy("img2img")(images, ctx(0.5, 2, seed=4))
    other_strength = get_strategy("img2img")(images, ctx(1.0, 2, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(same)))
    assert not any(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(other_seed)))
    assert not any(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(other_strength)))


@pytest.mark.parametrize("strategy, change", [
    ("img2img", {"num_inference_steps": 6}),
    ("img2img", {"guidance_scale": 2.0}),
    ("controlnet", {"num_inference_steps": 6}),
    ("controlnet", {"guidance_scale": 2.0}),
    ("controlnet", {"conditioning_scale": 0.5}),
    ("controlnet", {"canny_low": 150, "canny_high": 300}),  # a quarter fewer edges on these noise images
])
def test_each_setting_changes_the_images(strategy, change):
    settings = getattr(SMOKE, strategy)
    images = [noise(0), noise(1)]
    runs = [get_strategy(strategy)(images, ctx(1.0, 2, seed=3, **{strategy: s}))  # strength 1: all generated
            for s in (settings, settings.model_copy(update=change))]
    assert not any(np.array_equal(x, y) for x, y in zip(*map(arrays, runs)))


def test_canny_edges_outline_a_square():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 16:48] = 255
    edges = canny_edges(Image.fromarray(pixels), 100, 200)
    e = np.asarray(edges)
    assert edges.mode == "RGB" and (e[..., 0] == e[..., 1]).all() and (e[..., 0] == e[..., 2]).all()
    assert set(np.unique(e)) == {0, 255}
    on = e[..., 0] > 0
    ring = np.zeros((64, 64), bool)  # within a pixel of the square's border
    ring[14:50, 14:50] = True
    ring[18:46, 18:46] = False
    assert on[ring].sum() >= 4 * 28 and not on[~ring].any()
    assert not np.asarray(canny_edges(Image.new("RGB", (64, 64), "grey"), 100, 200)).any()


def test_controlnet_share_is_exact_when_whole_and_right_on_average():
    rng = np.random.default_rng(0)
    assert [generated_count(s, 10, rng) for s in (0.0, 0.3, 0.5, 1.0)] == [0, 3, 5, 10]
    assert abs(np.mean([generated_count(0.3, 1, rng) for _ in range(4000)]) - 0.3) < 0.03


def test_controlnet_generates_its_share_and_copies_the_rest():
    images = [noise(0), noise(1)]
    variants = get_strategy("controlnet")(images, ctx(0.5, 4))
    for image, vs in zip(images, variants):
        generated, copies = vs[:2], vs[2:]
        assert all(v.image.size == (32, 32) and v.tags == () and v.mask is None for v in generated)
        assert all(np.array_equal(np.asarray(v.image), np.asarray(image)) for v in copies) and len(copies) == 2


def test_controlnet_follows_the_control_image():
    # Same seed, prompt and noise (both at index 0): only the edge maps differ, so must the images
    # (a ControlNet with zero convolutions, or one not wired in, would give the same pixels).
    a, b = noise(0), noise(1)
    edges = [np.asarray(canny_edges(image.resize((32, 32)), 100, 200)) for image in (a, b)]
    assert not np.array_equal(*edges)
    run = [np.asarray(get_strategy("controlnet")([image], ctx(1.0, 1, seed=5))[0][0].image) for image in (a, a, b)]
    assert np.array_equal(run[0], run[1]) and not np.array_equal(run[0], run[2])


def test_controlnet_model_loads_unless_the_base_model_is_tiny(offline):
    # By path, the tiny model is a base model like any other: aug.controlnet.model is loaded for it.
    def render(pretrained, controlnet_model):
        settings = SMOKE.controlnet.model_copy(update={"model": controlnet_model})
        return np.asarray(get_strategy("controlnet")([noise(0)], ctx(1.0, 1, pretrained=pretrained,
                                                                     controlnet=settings))[0][0].image)

    by_name = render("tiny", "nobody/no-such-controlnet")  # "tiny" brings its own ControlNet
    assert np.array_equal(by_name, render(str(tiny_folder()), str(tiny_controlnet_folder())))
    with pytest.raises(ModelLoadError, match="nobody/no-such-controlnet"):
        render(str(tiny_folder()), "nobody/no-such-controlnet")


def test_tiny_controlnet_builds_deterministically(tmp_path):
    unet = UNet2DConditionModel.from_pretrained(tiny_folder(), subfolder="unet", use_safetensors=True)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_tiny_controlnet(tmp_path / name, unet, seed=seed)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b") != file_hashes(tmp_path / "c")
    controlnet = ControlNetModel.from_pretrained(tmp_path / "a", use_safetensors=True)
    assert controlnet.config.block_out_channels == unet.config.block_out_channels
    assert controlnet.config.cross_attention_dim == unet.config.cross_attention_dim
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0  # zero convolutions re-initialised


def test_tiny_controlnet_folder_is_built_once_and_loads_with_stock_diffusers(cache, offline):
    folder = tiny_controlnet_folder()
    hashes = file_hashes(folder)
    assert folder.parent == cache and tiny_controlnet_folder() == folder and file_hashes(folder) == hashes
    stock = ControlNetModel.from_pretrained(folder, use_safetensors=True)
    ours = load_controlnet("tiny")
    assert all(torch.equal(p, q) for p, q in zip(stock.state_dict().values(), ours.state_dict().values()))


def test_missing_controlnet_is_explained(offline):
    with pytest.raises(ModelLoadError, match="(?s)nobody/no-such-controlnet.*model.pretrained: tiny"):
        load_controlnet("nobody/no-such-controlnet")


@pytest.mark.parametrize("strategy", GENERATIVE)
def test_runs_offline_on_the_tiny_model(tmp_path, offline, strategy):
    clear_pipelines()  # load the tiny model and ControlNet again, offline
    originals = []
    for i in range(2):
        originals.append(tmp_path / "in" / f"{i:02d}.png")
        originals[-1].parent.mkdir(exist_ok=True)
        noise(i).save(originals[-1])
    augment_subject(originals, strategy=strategy, context=ctx(0.7, 2), caption="a photo of sks dog",
                    out_dir=tmp_path / "set", contact_sheet=tmp_path / "sheet.png")
    rows = read_jsonl(tmp_path / "set" / "captions.jsonl")
    assert len(rows) == 2 * 3 and {r["caption"] for r in rows} == {"a photo of sks dog"}
    assert all(e.image.is_file() and e.mask is None for e in read_training_set(tmp_path / "set"))
    assert (tmp_path / "sheet.png").is_file()
