"""Loss masks: masked-out latent cells do not count, and image masks reach latent resolution."""

from types import SimpleNamespace

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from dreamstudy.methods.trainer import diffusion_loss, latent_masks


def parts_predicting(error_on_right_half: float):
    """A stand-in UNet whose prediction is the noise, off by `error` on the right half of the latents."""
    def unet(noisy, timesteps, text):
        prediction = unet.noise.clone()
        prediction[..., prediction.shape[-1] // 2:] += error_on_right_half
        return SimpleNamespace(sample=prediction)
    return SimpleNamespace(unet=unet, noise_scheduler=DDPMScheduler())


def test_masked_cells_do_not_count():
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 500])
    parts = parts_predicting(3.0)
    parts.unet.noise = noise
    left = torch.zeros(2, 1, 8, 8)
    left[..., :4] = 1
    assert diffusion_loss(parts, latents, None, noise, timesteps, mask=left).item() == 0.0
    right = 1 - left
    assert torch.isclose(diffusion_loss(parts, latents, None, noise, timesteps, mask=right), torch.tensor(9.0))
    unmasked = diffusion_loss(parts, latents, None, noise, timesteps)
    assert torch.isclose(unmasked, torch.tensor(4.5))
    assert torch.isclose(diffusion_loss(parts, latents, None, noise, timesteps, mask=torch.ones(2, 1, 8, 8)),
                         unmasked)


def test_image_masks_reach_latent_resolution(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cells = latent_masks([tmp_path / "mask.png", None], resolution=32, latent_size=4)
    assert cells.shape == (2, 1, 4, 4)
    assert torch.equal(cells[0, 0, :, :2], torch.ones(4, 2)) and torch.equal(cells[0, 0, :, 2:], torch.zeros(4, 2))
    assert torch.equal(cells[1], torch.ones(1, 4, 4))
