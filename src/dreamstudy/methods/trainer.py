"""The one training loop of every method (the DreamBooth objective of diffusers' example scripts).

Frozen parts are not recomputed per step: each training image's VAE latent distribution and each
caption's text embedding are computed once, and a latent is drawn from the cached distribution
each step, exactly as encoding the image again would draw it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from dreamstudy.methods.registry import Method, Schedule

# diffusers' example defaults (AdamW weight decay, gradient clipping)
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


def pixel_batch(paths: list[Path], resolution: int) -> torch.Tensor:
    """Images as a [-1, 1] batch at `resolution`: resize and centre crop, as diffusers' scripts do."""
    to_pixels = v2.Compose([
        v2.PILToTensor(), v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5]),
    ])
    return torch.stack([to_pixels(Image.open(p).convert("RGB")) for p in paths])


@torch.no_grad()
def encode_captions(parts, captions: list[str]) -> torch.Tensor:
    ids = parts.tokenizer(captions, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    return parts.text_encoder(ids.to(parts.text_encoder.device))[0]


@torch.no_grad()
def latent_distribution(vae, pixels: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    dists = [vae.encode(part.to(vae.device)).latent_dist for part in pixels.split(chunk)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices, a new permutation per epoch."""
    while True:
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            yield batch


def diffusion_loss(parts, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    scheduler = parts.noise_scheduler
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = parts.unet(noisy, timesteps, text).sample
    return F.mse_loss(prediction.float(), target.float())


def train(method: Method, schedule: Schedule, parts, examples: list[tuple[Path, str]], *, resolution: int,
          seed: int, log: Callable[[int, float], None] | None = None) -> None:
    """Train `method` on (image, caption) examples; `parts` (models.loading.Components) are changed in place."""
    torch.manual_seed(seed)  # adapter initialisation
    for model in (parts.unet, parts.vae, parts.text_encoder):
        model.requires_grad_(False)
    trainable = method.prepare(parts)
    paths, captions = zip(*examples, strict=True)
    mean, std = latent_distribution(parts.vae, pixel_batch(list(paths), resolution))
    unique = sorted(set(captions))
    text = encode_captions(parts, unique)[[unique.index(c) for c in captions]]

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(trainable, lr=schedule.lr, weight_decay=WEIGHT_DECAY)
    order = batches(len(examples), schedule.batch_size, generator)
    scaling = parts.vae.config.scaling_factor
    parts.unet.train()
    for step in tqdm(range(schedule.steps), desc="train", unit="step"):
        idx = next(order)
        eps = torch.randn(mean[idx].shape, generator=generator).to(mean.device)
        latents = (mean[idx] + std[idx] * eps) * scaling
        loss = diffusion_loss(parts, latents, text[idx], generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if log is not None:
            log(step, loss.item())
    parts.unet.eval()
