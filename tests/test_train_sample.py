"""Training and sampling on the tiny model: the LoRA loads into a stock pipeline and changes its output,
CPU training is bit-reproducible, and each sample depends on its own seed only."""

import hashlib

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import read_jsonl
from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import Concept, train
from dreamstudy.models.loading import load_components, resolve_pretrained
from dreamstudy.sampling.protocol import SampleSpec
from dreamstudy.sampling.sample import generate
from tests.helpers import noise_examples, smoke_train_params

RESOLUTION = 32


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 3, seed=0)


def train_lora(examples, out, seed=0, steps=4):
    method, schedule = get_method("lora", smoke_train_params(lora={"lr": 1e-2, "steps": steps, "batch_size": 2}))
    parts = load_components("tiny")
    losses = []
    train(method, schedule, parts, [Concept(examples, "sks", "dog")], resolution=RESOLUTION,
          seed=seed, log=lambda step, loss: losses.append(loss))
    out.mkdir()
    method.save(parts, out)
    return losses


@pytest.fixture(scope="module")
def lora_dir(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "weights"
    losses = train_lora(examples, out)
    assert len(losses) == 4 and all(np.isfinite(losses))
    return out


def render(pipe, seed=0):
    return pipe("a photo of sks dog", height=RESOLUTION, width=RESOLUTION, num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_lora_loads_into_a_stock_pipeline_and_changes_output(lora_dir):
    weights = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    assert weights and all("lora" in key for key in weights)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))
    pipe.set_progress_bar_config(disable=True)
    before = render(pipe)
    pipe.load_lora_weights(lora_dir)
    after = render(pipe)
    assert np.abs(after - before).max() > 1e-3


def test_cpu_training_is_bit_reproducible(examples, lora_dir, tmp_path):
    train_lora(examples, tmp_path / "again")
    digest = lambda d: hashlib.sha256((d / "pytorch_lora_weights.safetensors").read_bytes()).hexdigest()
    assert digest(tmp_path / "again") == digest(lora_dir)


def test_each_image_depends_on_its_own_seed_not_on_its_neighbours(tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))

    def images(name, seeds, prompts, batch_size):
        specs = [SampleSpec("dog", 0, "recontextualization", prompt, k, seed, f"p00_{k}.png")
                 for k, (seed, prompt) in enumerate(zip(seeds, prompts))]
        generate(pipe, specs, tmp_path / name, resolution=RESOLUTION, num_inference_steps=2, guidance_scale=7.5,
                 batch_size=batch_size, extra={"class": SUBJECTS["dog"], "method": "lora"})
        return [np.asarray(Image.open(tmp_path / name / s.file)).astype(int) for s in specs]

    snow = ["a sks dog in the snow"] * 3
    batched = images("b3", [100, 101, 102], snow, 3)
    neighbours = images("other", [100, 7, 8], [snow[0], "a red cube", "a sks dog on the beach"], 3)
    assert np.array_equal(batched[0], neighbours[0])
    assert not np.array_equal(batched[0], batched[1])
    # another batch size may round a pixel differently, no more (hence sample.batch_size is a dependency)
    alone = images("b1", [100, 101, 102], snow, 1)
    assert all(np.abs(a - b).max() <= 3 for a, b in zip(alone, batched))
    rows = read_jsonl(tmp_path / "b3" / "samples.jsonl")
    assert [r["seed"] for r in rows] == [100, 101, 102] and rows[0]["class"] == "dog"
