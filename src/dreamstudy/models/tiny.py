"""A tiny random-init pipeline with Stable Diffusion 1.x's architecture, for offline smoke runs.

Same component classes, wiring, tokenizer, latent channels, VAE downsampling factor (8) and noise
schedule as SD 1.5; only widths and depths shrink, so the whole DAG (train LoRA, sample, evaluate) runs
on a CPU in seconds. Its images are noise: numbers from it test the plumbing, not the method.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamstudy.models.tokenizer import MODEL_MAX_LENGTH, write_clip_tokenizer

TEXT_WIDTH = 32
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary, tokenizer.clip_vocab

# SD 1.5's UNet pattern (cross-attention at the finer levels, plain ResNet blocks at the coarsest,
# cross-attention mid block) at two levels instead of four.
UNET_CONFIG = dict(
    sample_size=8,  # latent side; x8 = 64 px default
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=4,  # diffusers' SD 1.x naming: this is the number of heads
    norm_num_groups=8,
)
# Four levels like SD's VAE so one latent pixel covers 8x8 image pixels, as in SD.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
)
TEXT_ENCODER_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=MODEL_MAX_LENGTH,
    hidden_size=TEXT_WIDTH,
    intermediate_size=4 * TEXT_WIDTH,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=TEXT_WIDTH,
    hidden_act="quick_gelu",  # as OpenAI CLIP ViT-L/14
    bos_token_id=VOCAB_SIZE - 2,
    eos_token_id=VOCAB_SIZE - 1,  # CLIPTextModel pools at this id
    pad_token_id=VOCAB_SIZE - 1,
)
# SD 1.5's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)
# Not a PNDM argument, but SD 1.5's file has it so that DDPM/DDIM schedulers made from this config
# (training, sampling) do not clip x0 to [-1, 1], which would be wrong for latents.
EXTRA_SCHEDULER_CONFIG = dict(clip_sample=False)
ARCHITECTURE = {"unet": UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": TEXT_ENCODER_CONFIG,
                "scheduler": SCHEDULER_CONFIG | EXTRA_SCHEDULER_CONFIG}
# Four entries = three stride-2 convolutions: a ControlNet's control image goes from pixels to latents (x1/8)
# as in SD's ControlNets, with fewer channels than their (16, 32, 96, 256).
CONDITIONING_CHANNELS = (8, 16, 32, 32)


def latent_scaling_factor(vae: AutoencoderKL, generator: torch.Generator) -> float:
    """1 / std of the latents of a batch of random images, the LDM recipe behind SD's 0.18215.

    Scaling latents to unit variance keeps the noise schedule's signal-to-noise ratios as designed.
    Rounded so the value, written into the config, does not depend on last-bit float differences.
    """
    images = torch.rand(8, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
    return float(f"{1 / latents.std().item():.4g}")


def build_random_pipeline(folder: str | Path, architecture: dict = ARCHITECTURE, seed: int = 0) -> None:
    """Save a random-init SD pipeline of `architecture` (this module's or sd15's ARCHITECTURE) into `folder`
    as safetensors; the same architecture and seed give the same bytes."""
    folder = Path(folder)
    write_clip_tokenizer(folder / "tokenizer")
    # Module constructors draw from the global RNG: seed it, but leave the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**architecture["unet"])
        vae = AutoencoderKL(**architecture["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**architecture["text_encoder"]))
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, torch.Generator().manual_seed(seed)))
    scheduler = PNDMScheduler(**SCHEDULER_CONFIG)  # SD 1.x's, whatever the size
    scheduler.register_to_config(**EXTRA_SCHEDULER_CONFIG)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
