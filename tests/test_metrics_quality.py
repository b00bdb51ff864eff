"""DIV (LPIPS), PRES, the "Real images" row and the embedding cache: known answers with random-init encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from dreamstudy.metrics import diversity
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.diversity import copy_trunk, load_lpips, mean_pairwise_lpips, pairwise_lpips, to_lpips_input
from dreamstudy.metrics.encoders import load_encoders
from dreamstudy.metrics.evaluate import prompt_diversity, real_images
from dreamstudy.metrics.preservation import base_class_images, preservation
from dreamstudy.metrics.similarity import mean_pairwise_cosine
from dreamstudy.sampling.protocol import class_images
from tests.test_metrics import noise, sample_row, save, solid


@pytest.fixture(scope="module")
def encoders():
    return load_encoders(pretrained=False, seed=0)


@pytest.fixture(scope="module")
def perceptual():
    torch.manual_seed(0)
    return load_lpips(pretrained=False)


def test_lpips_of_identical_images_is_zero_and_of_different_ones_positive(perceptual):
    image = noise(0)
    assert mean_pairwise_lpips(perceptual, [image, image.copy(), image.copy()]) == 0
    pixels = np.asarray(image).reshape(-1, 3)
    shuffled = Image.fromarray(np.random.default_rng(1).permutation(pixels).reshape(64, 64, 3))
    assert mean_pairwise_lpips(perceptual, [image, shuffled]) > 0.01  # same pixels, other places
    assert mean_pairwise_lpips(perceptual, [image, solid((200, 30, 30))]) > 0.01
    assert math.isnan(mean_pairwise_lpips(perceptual, [image]))  # no pair


def test_pairwise_lpips_is_lpips_forward(perceptual):
    # One trunk pass per image must give what lpips computes pair by pair.
    pixels = to_lpips_input([noise(seed) for seed in range(3)] + [solid((10, 90, 200))])
    first, second = torch.triu_indices(4, 4, offset=1)
    with torch.no_grad():
        expected = perceptual(pixels[first], pixels[second]).flatten()
    assert torch.allclose(pairwise_lpips(perceptual, pixels), expected, atol=1e-6)


def test_lpips_weights_load_without_unpickling(monkeypatch):
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or real_load(*args, **kwargs))
    model = load_lpips(pretrained=False)
    assert calls and all(call.get("weights_only") is True for call in calls)
    bundled = real_load(diversity.LINEAR_WEIGHTS, map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, bundled["lin0.model.1.weight"])  # calibrated, not random


def test_pretrained_trunk_is_imagenet_alexnet_loaded_as_weights_only(monkeypatch):
    torch.manual_seed(4)
    imagenet = torchvision.models.alexnet()  # stands in for the download
    asked = {}

    def download(self, **kwargs):
        asked.update(kwargs, weights=self)
        return imagenet.state_dict()

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", download)
    model = load_lpips(pretrained=True)
    assert asked["weights"] == torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    assert asked["weights_only"] is True and asked["check_hash"] is True
    assert torch.equal(model.net.slice1[0].weight, imagenet.features[0].weight)


def test_copy_trunk_puts_alexnet_features_into_lpips():
    torch.manual_seed(3)
    alexnet = torchvision.models.alexnet()
    model = load_lpips(pretrained=False)
    copy_trunk(model, alexnet)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.net(x).relu5, alexnet.features[:12](x))


def test_lpips_rejects_mixed_sizes_naming_the_files():
    with pytest.raises(ValueError, match="b.png"):
        to_lpips_input([noise(0, 64), noise(1, 48)], where=["a.png", "b.png"])


def test_prompt_diversity_per_prompt(encoders, tmp_path):
    same = save(noise(0), tmp_path / "same.png")
    other = save(solid((200, 30, 30)), tmp_path / "other.png")
    samples = [sample_row(same, "a sks dog", prompt_index=0, image_index=0),
               sample_row(same, "a sks dog", prompt_index=0, image_index=1),
               sample_row(same, "a sks dog on the moon", prompt_index=1, image_index=0),
               sample_row(other, "a sks dog on the moon", prompt_index=1, image_index=1),
               sample_row(same, "a sks dog in snow", prompt_index=2, image_index=0)]
    div = prompt_diversity(samples, encoders).set_index("prompt_index")["div"]
    assert div[0] == 0 and div[1] > 0.01 and math.isnan(div[2])


def test_real_images_of_identical_photos_is_one(encoders, tmp_path):
    references = {"dog": [save(noise(0), tmp_path / f"dog{i}.png") for i in range(3)],
                  "can": [save(noise(0), tmp_path / "can0.png"), save(solid((200, 30, 30)), tmp_path / "can1.png")],
                  "cat": [save(noise(2), tmp_path / "cat0.png")]}
    table = real_images(["dog", "can", "cat", "dog"], references, EmbeddingCache(encoders)).set_index("subject")
    assert list(table.index) == ["can", "cat", "dog"]
    assert table.loc["dog", ["dino", "clip_i"]].tolist() == pytest.approx([1, 1], abs=1e-5)
    assert table.loc["can", "dino"] < 0.99 and math.isnan(table.loc["cat", "dino"])
    assert bool(table.loc["dog", "live"]) and not table.loc["can", "live"]


def pres_tree(tmp_path, class_priors: bool):
    """Two PRES images of a dog run (their seeds), the dog's photos, and (optionally) the base model's class
    images of the dog subject."""
    specs = class_images("dog", 2, seed=0)
    real = [save(noise(0), tmp_path / "real0.png"), save(solid((30, 160, 60)), tmp_path / "real1.png")]
    pres = [save(image, tmp_path / "pres" / spec.file)  # fine-tuned: the subject itself
            for spec, image in zip(specs, [noise(0), solid((30, 160, 60))])]
    if class_priors:
        for spec, image in zip(specs, [solid((90, 90, 90)), solid((200, 30, 30))]):
            save(image, tmp_path / "class_priors" / "dog" / spec.file)
    return [spec.seed for spec in specs], pres, real


def test_pres_and_pres_base(encoders, tmp_path):
    seeds, pres, references = pres_tree(tmp_path, class_priors=True)
    base = base_class_images("dog", seeds, tmp_path / "class_priors" / "dog", seed=0, where="pres.jsonl")
    cache = EmbeddingCache(encoders)
    row = preservation(pres, base, references, cache)
    # The fine-tuned model draws exactly the subject's photos for "a photo of a dog": PRES = the subject's
    # mean pairwise similarity with itself; the base model's class images are far from it.
    real = cache.images("dino", references)
    assert row["pres"] == pytest.approx(mean_pairwise_cosine(real, real), abs=1e-5)
    assert base == sorted((tmp_path / "class_priors" / "dog").glob("*.png"))
    assert row["pres_base"] == pytest.approx(mean_pairwise_cosine(cache.images("dino", base), real), abs=1e-5)
    assert row["pres"] > row["pres_base"] and row["n_pres"] == 2


def test_pres_base_nan_without_class_images_and_error_on_other_seeds(encoders, tmp_path):
    seeds, pres, references = pres_tree(tmp_path, class_priors=False)
    assert base_class_images("dog", seeds, tmp_path / "class_priors" / "dog", seed=0, where="pres.jsonl") == []
    row = preservation(pres, [], references, EmbeddingCache(encoders))
    assert not math.isnan(row["pres"]) and math.isnan(row["pres_base"])
    with pytest.raises(ValueError, match=r"lora/none/dog/pres.jsonl.*params seed 1"):
        base_class_images("dog", seeds, tmp_path / "class_priors" / "dog", seed=1, where="lora/none/dog/pres.jsonl")


def test_pres_nan_without_pres_images(encoders, tmp_path):
    _, _, references = pres_tree(tmp_path, class_priors=False)
    row = preservation([], [], references, EmbeddingCache(encoders))
    assert math.isnan(row["pres"]) and math.isnan(row["pres_base"]) and row["n_pres"] == 0


class Counting:
    """Encoders whose image encoding is counted, image by image."""

    def __init__(self, encoders, seed=0):
        self.inner, self.seed, self.encoded = encoders, seed, 0

    def cache_key(self, which):
        return f"{self.inner.cache_key(which)}-as-seed{self.seed}"

    def embed_images(self, which, images, batch_size=32):
        self.encoded += len(images)
        return self.inner.embed_images(which, images, batch_size)


def test_cache_hit_avoids_reencoding(encoders, tmp_path):
    paths = [save(noise(i), tmp_path / f"{i}.png") for i in range(3)]
    duplicate = save(noise(0), tmp_path / "copy_of_0.png")
    first = Counting(encoders)
    embeddings = EmbeddingCache(first, tmp_path / "cache").images("dino", paths + [duplicate])
    assert first.encoded == 3  # the duplicate file is the same image: encoded once

    again = Counting(encoders)  # a later run (another stage, experiment): reads the safetensors files
    cache = EmbeddingCache(again, tmp_path / "cache")
    assert torch.equal(cache.images("dino", paths + [duplicate]), embeddings) and again.encoded == 0
    cache.images("clip", paths)
    assert again.encoded == 3  # another encoder: its own entries
    assert torch.allclose(embeddings, encoders.embed_images_dino([noise(i) for i in (0, 1, 2, 0)]), atol=1e-6)

    other_weights = Counting(encoders, seed=1)  # other random weights must not reuse these embeddings
    EmbeddingCache(other_weights, tmp_path / "cache").images("dino", paths)
    assert other_weights.encoded == 3


def test_cached_embeddings_do_not_depend_on_what_else_was_encoded(encoders, tmp_path):
    """Each image is encoded alone: its embedding has the same bits whichever images came with it (a batch of
    seven rounds differently), so a run's scores do not depend on which run filled the cache."""
    paths = [save(noise(i), tmp_path / f"{i}.png") for i in range(7)]
    together = EmbeddingCache(encoders).images("clip", paths)
    apart = torch.cat([EmbeddingCache(encoders).images("clip", [path]) for path in paths])
    assert torch.equal(together, apart)


def test_cache_encodes_again_over_a_torn_file(encoders, tmp_path):
    path = save(noise(0), tmp_path / "a.png")
    EmbeddingCache(encoders, tmp_path / "cache").images("dino", [path])
    (torn,) = (tmp_path / "cache").rglob("*.safetensors")
    torn.write_bytes(torn.read_bytes()[:20])
    counting = Counting(encoders)
    counting.cache_key = encoders.cache_key  # the same key as the torn entry
    with pytest.warns(UserWarning, match="unreadable cached embedding"):
        EmbeddingCache(counting, tmp_path / "cache").images("dino", [path])
    assert counting.encoded == 1
