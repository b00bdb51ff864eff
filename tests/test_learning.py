"""Learning works, on the tiny model and one DreamBench subject (the embedded copy, 32 px):

- every registered method lowers the diffusion loss on a held-out image (fixed timesteps and noise);
- DreamBooth's and LoRA's samples, loaded from their saved artefacts, are closer to the subject than the
  untrained model's samples from the same seeds.

"Closer" is measured on VAE latents, the model's own image features: the tiny VAE's weights are random, so
its decoded pixels carry no trace of the subject while its latents do. Margins seen on the CPU, trained /
untrained: sample distance DreamBooth 0.68, LoRA 0.86; held-out loss DreamBooth 0.81, LoRA 0.94, Custom
Diffusion 0.95, Textual Inversion 0.996 (one token of a 32-wide text encoder moves little; lower for every
training seed tried).
"""

import dataclasses

import pytest
import torch

from dreamstudy.augment.dataset import instance_caption
from dreamstudy.data.dataset import load_dataset
from dreamstudy.data.fetch import fetch_dreambench
from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import (
    Concept,
    Examples,
    diffusion_loss,
    latent_distribution,
    pixel_batch,
    train,
)
from dreamstudy.models.loading import load_components, load_pipeline
from dreamstudy.params import METHODS
from dreamstudy.sampling.sample import use_scheduler
from tests.helpers import smoke_train_params

RESOLUTION = 32
STEPS = 60
# Learning rates that move the tiny model clearly within STEPS; other methods keep params.smoke.yaml's.
LEARNING_RATES = {"dreambooth": 1e-3, "lora": 3e-2, "custom_diffusion": 1e-2}
SEEDS = range(4)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreambench")
    fetch_dreambench("embedded", root, image_size=64)
    return load_dataset(root).subjects["dog"]


@pytest.fixture(scope="module")
def trained(subject):
    """method name -> (method, parts) after `steps` steps on all but the subject's last image (memoised)."""
    runs = {}

    def fit(name, steps=STEPS):
        if (name, steps) not in runs:
            section = {"batch_size": 1} | ({"lr": LEARNING_RATES[name]} if name in LEARNING_RATES else {})
            method, schedule = get_method(name, smoke_train_params(**{name: section}))
            parts = load_components("tiny")
            examples = Examples([(image, instance_caption("sks", subject.class_name)) for image in subject.images[:-1]])
            train(method, dataclasses.replace(schedule, steps=steps), parts,
                  [Concept(examples, "sks", subject.class_name)], resolution=RESOLUTION, seed=0)
            runs[name, steps] = method, parts
        return runs[name, steps]
    return fit


@torch.no_grad()
def held_out_loss(method, parts, subject, n=8) -> float:
    """Diffusion loss on the subject's last image (not trained on) at n fixed timesteps with fixed noise."""
    mean, _ = latent_distribution(parts.vae, pixel_batch(subject.images[-1:], RESOLUTION))
    latents = (mean * parts.vae.config.scaling_factor).expand(n, -1, -1, -1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.linspace(0, parts.noise_scheduler.config.num_train_timesteps - 1, n).long()
    caption = instance_caption(method.token("sks"), subject.class_name)
    text = method.encode_text(parts.text_encoder, method.input_ids(parts.tokenizer, [caption])).expand(n, -1, -1)
    return diffusion_loss(parts, latents, text, noise, timesteps).item()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_lowers_the_held_out_loss(name, trained, subject):
    before = held_out_loss(*trained(name, steps=0), subject)  # step 0: prepared (adapters, tokens), untrained
    after = held_out_loss(*trained(name), subject)
    assert after < before, f"{name}: held-out loss {before:.4f} -> {after:.4f}"


def sample_latents(pipe, prompt: str) -> torch.Tensor:
    """Final latents (before the VAE decoder), in the units of the VAE encoder's output."""
    use_scheduler(pipe, "ddim")
    pipe.set_progress_bar_config(disable=True)
    latents = pipe([prompt] * len(SEEDS), height=RESOLUTION, width=RESOLUTION, num_inference_steps=10,
                   generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent").images
    return latents / pipe.vae.config.scaling_factor


@pytest.mark.parametrize("name", ["dreambooth", "lora"])
def test_samples_move_towards_the_subject(name, trained, subject, tmp_path):
    method, parts = trained(name)
    method.save(parts, tmp_path)
    pipe = load_pipeline("tiny")
    prompt = instance_caption(method.token("sks"), subject.class_name)
    untrained = sample_latents(pipe, prompt)
    method.load_into(pipe, tmp_path)
    tuned = sample_latents(pipe, prompt)
    reference, _ = latent_distribution(pipe.vae, pixel_batch(subject.images, RESOLUTION))

    def distance(latents):  # per sample: mean squared distance to the nearest of the subject's images
        return ((latents[:, None] - reference[None]) ** 2).mean(dim=(2, 3, 4)).min(dim=1).values

    before, after = distance(untrained), distance(tuned)
    assert (after < before).all(), f"{name}: per-seed distance {before.tolist()} -> {after.tolist()}"
    assert after.mean() < 0.95 * before.mean(), f"{name}: mean distance {before.mean():.3f} -> {after.mean():.3f}"
